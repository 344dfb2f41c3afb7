"""Per-group quantization primitives: pure functions on tensors, no modules.

Weights are ``[N, K]`` (out_features, in_features). Groups run along K: column
``k`` belongs to group ``g_idx[k]`` (``k // group_size`` unless an algorithm
reorders columns). Scales and zero points are ``[N, n_groups]``; zero points are
unsigned codes (floats here, rounded), ``None`` for symmetric quantization.
"""
from __future__ import annotations

import torch

from .formats import WeightFormat


def per_channel(group_size: int) -> bool:
    """One scale per output channel? Saved as ``group_size=-1``; the one place that reads it."""
    return group_size <= 0


def group_width(in_features: int, group_size: int) -> int:
    """Input columns per group: ``group_size``, or all of them per channel."""
    return in_features if per_channel(group_size) else group_size


def n_groups(in_features: int, group_size: int) -> int:
    return -(-in_features // group_width(in_features, group_size))


def default_g_idx(in_features: int, group_size: int, device=None) -> torch.Tensor:
    return torch.arange(in_features, device=device, dtype=torch.int32) // group_width(in_features, group_size)


def grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] -> [N, G, gs], zero-padding a partial last group (zeros are exact in every format)."""
    n, k = w.shape
    gs = group_width(k, group_size)
    pad = (-k) % gs
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(n, -1, gs)


def group_qparams(w: torch.Tensor, fmt: WeightFormat, sym: bool, shrink: torch.Tensor | float = 1.0):
    """Scales (and zero points) for groups along the last axis of ``w`` (``[..., gs]``).

    ``shrink`` < 1 narrows the range (clipping search). Symmetric int formats with an
    extra negative level (``qmin = -qmax - 1``, e.g. int4_fullrange's -8) take a *signed*
    scale that maps the group's largest-magnitude value onto ``qmin``, whatever its sign,
    so every group uses all 2^b levels (llama.cpp's Q4_0 and Neural Compressor do the
    same; the effect on perplexity: ``benchmarks/results/quality*.md``). Every kernel
    multiplies by the stored scale, so its sign needs no support.
    """
    w = w.float()
    wmax = w.amax(-1) * shrink
    wmin = w.amin(-1) * shrink
    if fmt.is_codebook:
        top = max(abs(v) for v in fmt.levels)
        scale = torch.maximum(wmax.abs(), wmin.abs()) / top
        return scale.clamp_min(1e-10), None
    if sym:
        if fmt.qmin == -fmt.qmax:  # symmetric grid: the sign of the scale changes nothing
            return (torch.maximum(wmax.abs(), wmin.abs()) / fmt.qmax).clamp_min(1e-10), None
        extreme = torch.where(wmax.abs() > wmin.abs(), wmax, wmin)
        return clamp_scale(extreme / fmt.qmin, 1e-10), None
    wmax, wmin = wmax.clamp_min(0), wmin.clamp_max(0)
    scale = ((wmax - wmin) / fmt.max_code).clamp_min(1e-10)
    zero = torch.round(-wmin / scale).clamp(0, fmt.max_code)
    return scale, zero


def clamp_scale(scale: torch.Tensor, tiny: float) -> torch.Tensor:
    """``scale`` with magnitude at least ``tiny``, keeping its sign (signed full-range scales)."""
    sign = torch.where(scale < 0, -1.0, 1.0)
    return sign * scale.abs().clamp_min(tiny)


def stored_scale(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``scale`` rounded to the dtype it will be saved in (so codes fit it), never zero."""
    return clamp_scale(scale.to(dtype).float(), torch.finfo(dtype).tiny)


def stored_qparams(groups: torch.Tensor, fmt: WeightFormat, sym: bool, scale_dtype: torch.dtype,
                   shrink: torch.Tensor | float = 1.0):
    """``group_qparams`` with the scales rounded to the dtype they are saved in."""
    scale, zero = group_qparams(groups, fmt, sym, shrink=shrink)
    return stored_scale(scale, scale_dtype), zero


def quantize_groups(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                    fmt: WeightFormat) -> torch.Tensor:
    """Float ``[..., gs]`` with qparams ``[...]`` -> uint8 codes ``[..., gs]``."""
    x = w.float() / scale.unsqueeze(-1)
    if fmt.is_codebook:
        levels = fmt.codebook(device=w.device)
        return _nearest_level(x, levels)
    z = fmt.sym_zero if zero is None else zero.unsqueeze(-1)
    return torch.clamp(torch.round(x) + z, 0, fmt.max_code).to(torch.uint8)


def _nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(levels)
    sorted_levels = levels[order]
    mids = (sorted_levels[1:] + sorted_levels[:-1]) / 2
    idx = torch.bucketize(x.contiguous(), mids)
    return order[idx].to(torch.uint8)


def dequantize_groups(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                      fmt: WeightFormat) -> torch.Tensor:
    if fmt.is_codebook:
        return fmt.codebook(device=codes.device)[codes.long()] * scale.unsqueeze(-1).float()
    z = fmt.sym_zero if zero is None else zero.unsqueeze(-1).float()
    return (codes.float() - z) * scale.unsqueeze(-1).float()


def quantize_weight(w: torch.Tensor, fmt: WeightFormat, group_size: int, sym: bool,
                    mse_clip: bool = False, clip_grid: int = 20, clip_min: float = 0.5,
                    scale_dtype: torch.dtype = torch.float32, shrink: torch.Tensor | float = 1.0):
    """RTN of a whole ``[N, K]`` weight: returns ``codes [N, K]``, ``scale [N, G]``, ``zero [N, G] | None``.

    ``shrink`` (a scalar or ``[N, G]`` ratios) narrows each group's range, as a clipping
    search chose it. With ``mse_clip`` each group's range is further shrunk by the factor (on
    a grid down to ``clip_min``) that minimises the group's squared reconstruction error.
    Scales are rounded to ``scale_dtype`` before the codes are chosen, so codes fit the stored scales.
    """
    n, k = w.shape
    groups = grouped(w.float(), group_size)

    def qparams(ratio):
        return stored_qparams(groups, fmt, sym, scale_dtype, shrink=shrink * ratio)

    scale, zero = qparams(1.0)
    if mse_clip:
        best = _group_error(groups, scale, zero, fmt)
        for i in range(1, clip_grid + 1):
            ratio = 1 - (1 - clip_min) * i / clip_grid
            s, z = qparams(ratio)
            err = _group_error(groups, s, z, fmt)
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, s, scale)
            if zero is not None:
                zero = torch.where(better, z, zero)
    codes = quantize_groups(groups, scale, zero, fmt).reshape(n, -1)[:, :k]
    return codes, scale, zero


def round_trip_groups(groups: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                      fmt: WeightFormat) -> torch.Tensor:
    """``[..., gs]`` float groups quantized with their qparams and dequantized again."""
    if fmt.is_codebook:
        return dequantize_groups(quantize_groups(groups, scale, zero, fmt), scale, zero, fmt)
    # The operations of quantize_groups then dequantize_groups, in their order, in place on one
    # tensor: the codes stay floats (integers in [0, max_code]: the uint8 round trip is exact), so
    # the result is the same bit for bit in 5 passes over the weight instead of ~10 (AWQ's scale
    # search and clipping search run this ~40 times per linear).
    s = scale.unsqueeze(-1).float()
    z = fmt.sym_zero if zero is None else zero.unsqueeze(-1).float()
    x = groups.float() / s
    return x.round_().add_(z).clamp_(0, fmt.max_code).sub_(z).mul_(s)


def _group_error(groups, scale, zero, fmt):
    return (round_trip_groups(groups, scale, zero, fmt) - groups).pow(2).sum(-1)


def fake_quantize_weight(w: torch.Tensor, fmt: WeightFormat, group_size: int, sym: bool,
                         scale_dtype: torch.dtype = torch.float32,
                         shrink: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``[N, K]`` quantized then dequantized (float32), with ranges narrowed by ``shrink``
    (a scalar or ``[N, G]`` ratios): the weight a quantized layer will compute with."""
    n, k = w.shape
    groups = grouped(w.float(), group_size)
    scale, zero = stored_qparams(groups, fmt, sym, scale_dtype, shrink=shrink)
    return round_trip_groups(groups, scale, zero, fmt).reshape(n, -1)[:, :k]


def output_error(dw: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``trace(dW H dW^T)``: with ``H = sum x x^T`` over calibration inputs, the squared error
    of ``x @ dW.T`` summed over those inputs (``dW``: a weight's change, e.g. by quantization)."""
    return ((dw @ H) * dw).sum()


def shrunk(h: torch.Tensor, s: float) -> torch.Tensor:
    """``(1 - s) h + s diag(h)``: the channel correlations of the calibration text weighed by ``1 - s``."""
    return h if s == 0 else (1 - s) * h + s * torch.diag(h.diagonal())


def dequantize_weight(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                      fmt: WeightFormat, g_idx: torch.Tensor, zero_is_min: bool = False) -> torch.Tensor:
    """Codes ``[N, K]`` -> float32 ``[N, K]``, each column using its group's qparams.

    ``zero_is_min``: ``zero`` holds float group minimums and ``w = u * s + zero``
    (the GGUF Q4_1 / "scale + min" form) instead of integer zero-point codes.
    """
    g = g_idx.long()
    s = scale.float()[:, g]
    if fmt.is_codebook:
        return fmt.codebook(device=codes.device)[codes.long()] * s
    if zero_is_min:
        return codes.float() * s + zero.float()[:, g]
    z = fmt.sym_zero if zero is None else zero.float()[:, g]
    return (codes.float() - z) * s

"""QuantEase (Behdin et al. 2023, arXiv 2309.01885): layer-wise quantization by cyclic
coordinate descent on ``tr((W - Q) H (W - Q)^T)``, ``H`` the Hessian of the layer's inputs
(the one GPTQ accumulates), with a closed-form update per weight and no matrix inversion
(``coordinate_descent.py``).

* ``quantease``: starts from the float weight (the first sweep is then a greedy
  error-compensating pass), groups' scales from the weight's ranges; ``config.num_iter``
  sweeps, each group's scales given their exact per-row optimum before every sweep on the grid
  and re-fitted jointly by least squares at the end (kept per row only where they lower the
  loss, so the loss never rises).
* ``gptq_quantease``: starts from GPTQ's codes and scales, then the same sweeps.
* ``act_order``: columns are swept in order of decreasing ``diag(H)`` and groups are formed
  in that order (recorded in ``g_idx``), as GPTQ's act-order.
* Outliers (``outlier_fraction`` > 0): that fraction of the weights (``"unstructured"``) or
  of the input columns (``"columns"``) stays in full precision: chosen by ``outlier_support``,
  excluded from the groups' ranges, moved to their unconstrained optimum by every sweep, and
  returned as a sparse fp16 residual on top of the codes (``quant_core.outliers``).
* Every format of the table: int (sym/asym, int2..int8) and codebooks (nf4, fp4_e2m1), groups
  or per-channel; scales are rounded to the stored scale dtype so codes fit the saved scales.

``quantease(weight, hessian, config, start=None)`` returns a ``QuantResult`` and never packs.
"""
from __future__ import annotations

import torch

from ..config import QuantConfig
from ..outliers import SparseResidual
from ..primitives import dequantize_groups, group_width, per_channel, quantize_groups, quantize_weight
from .base import QuantResult
from .coordinate_descent import CoordinateDescent
from .driver import CalibrationBlock, calibrated_algorithm
from .gptq import act_order_permutation, gptq, solve_block
from .outlier_support import outlier_mask

# Sweep schedule (the reference implementation's, measured to help here too): every third
# sweep leaves the grid (each column moves to its unconstrained optimum), which lets columns
# escape the nearest grid point they got stuck at; the last FINAL_QUANTIZED sweeps stay on it.
RELAX_EVERY = 3
FINAL_QUANTIZED = 3


def _working_order(h: torch.Tensor, config: QuantConfig, start: QuantResult | None):
    """(perm or None, g_idx or None): the order columns are swept in, groups contiguous in it."""
    k = h.shape[0]
    gs = group_width(k, config.group_size)
    if start is not None and start.g_idx is None:  # GPTQ without act_order, or with static groups
        return None, None
    if start is None and not config.act_order:
        return None, None
    perm = act_order_permutation(h)
    working_groups = torch.arange(k, device=h.device) // gs
    if start is not None and not torch.equal(start.g_idx.long()[perm], working_groups):
        perm = torch.sort(start.g_idx.long(), stable=True).indices  # group by group, natural order inside
    g_idx = None if per_channel(config.group_size) else working_groups[torch.argsort(perm)].to(torch.int32)
    return perm, g_idx


def _initial_qparams(w: torch.Tensor, bounds, config: QuantConfig, free: torch.Tensor | None):
    """Each group's qparams from the range of its weights outside the outliers, narrowed by
    the clipping search (measured better starts than the full range, whatever ``mse_clip`` says)."""
    ranged = w if free is None else torch.where(free, 0.0, w)
    scales, zeros = [], []
    for a, b in bounds:
        _, s, z = quantize_weight(ranged[:, a:b], config.format, -1, config.sym, mse_clip=True,
                                  scale_dtype=config.torch_scale_dtype)
        scales.append(s)
        zeros.append(z)
    return torch.cat(scales, 1).float(), None if config.sym else torch.cat(zeros, 1).float()


def _start_weight(start: QuantResult, perm, bounds, config: QuantConfig) -> torch.Tensor:
    codes = start.codes if perm is None else start.codes[:, perm]
    return torch.cat([dequantize_groups(codes[:, a:b], start.scales[:, g].float(),
                                        None if start.zeros is None else start.zeros[:, g].float(), config.format)
                      for g, (a, b) in enumerate(bounds)], 1)


def quantease(weight: torch.Tensor, hessian: torch.Tensor, config: QuantConfig,
              start: QuantResult | None = None) -> QuantResult:
    """QuantEase of one ``[N, K]`` weight with its ``[K, K]`` input Hessian (see module docstring)."""
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone().to(w.device)
    n, k = w.shape
    if h.shape != (k, k):
        raise ValueError(f"QuantEase: Hessian of shape {tuple(h.shape)} does not match a weight with {k} inputs")
    dead = torch.diag(h) == 0  # inputs that were always zero: any value works, 0 is exact
    h[dead, dead] = 1
    w[:, dead] = 0
    perm, g_idx = _working_order(h, config, start)
    if perm is not None:
        w, h = w[:, perm], h[perm][:, perm]
    gs = group_width(k, config.group_size)
    bounds = [(a, min(a + gs, k)) for a in range(0, k, gs)]
    free = outlier_mask(w, h, config) if config.outlier_fraction > 0 else None
    if start is None:
        scales, zeros = _initial_qparams(w, bounds, config, free)
        q = w
    else:
        scales, zeros = start.scales.float(), None if start.zeros is None else start.zeros.float()
        q = _start_weight(start, perm, bounds, config)
    cd = CoordinateDescent(w, h, config.format, bounds, scales, zeros, q, config.block_size, free,
                           config.torch_scale_dtype, on_grid=start is not None)
    _run(cd, config.num_iter, config.torch_scale_dtype, start_on_grid=start is not None)
    return _result(cd, bounds, perm, g_idx, config)


def _run(cd: CoordinateDescent, num_iter: int, scale_dtype: torch.dtype, start_on_grid: bool) -> None:
    """``num_iter`` sweeps; scales are re-fitted after every sweep that ends on the grid, and
    each row ends in its best state on the grid (the start included, when it is on the grid)."""
    if start_on_grid:
        cd.remember_best()
    for sweep in range(num_iter):
        on_grid = sweep % RELAX_EVERY != 1 or sweep >= num_iter - FINAL_QUANTIZED
        cd.sweep(quantize=on_grid)
        if on_grid:
            cd.remember_best()
    cd.refit_scales(scale_dtype)  # joint least squares once at the end (kept per row where it helps)
    cd.remember_best()
    cd.restore_best()


def _result(cd: CoordinateDescent, bounds, perm, g_idx, config: QuantConfig) -> QuantResult:
    """Codes (the grid point of each entry; nearest for outliers) and the outliers' residual, in
    the weight's own column order."""
    fmt = config.format
    codes, grid = [], []
    for g, (a, b) in enumerate(bounds):
        s = cd.scales[:, g]
        z = None if cd.zeros is None else cd.zeros[:, g]
        c = quantize_groups(cd.q[:, a:b], s, z, fmt)
        codes.append(c)
        grid.append(dequantize_groups(c, s, z, fmt))
    codes = torch.cat(codes, 1)
    outliers = None
    if cd.free is not None:
        residual, free = cd.q - torch.cat(grid, 1), cd.free
        if perm is not None:
            inv = torch.argsort(perm)
            residual, free = residual[:, inv], free[:, inv]
        outliers = SparseResidual.from_dense(residual, free, config.outlier_structure)
    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    return QuantResult(codes, cd.scales, cd.zeros, g_idx, outliers)


def gptq_quantease(weight: torch.Tensor, hessian: torch.Tensor, config: QuantConfig) -> QuantResult:
    """QuantEase sweeps started from GPTQ's codes and scales."""
    return quantease(weight, hessian, config, start=gptq(weight, hessian, config))


@calibrated_algorithm("quantease")
def quantease_step(block: CalibrationBlock) -> None:
    solve_block(block, quantease)


@calibrated_algorithm("gptq_quantease")
def gptq_quantease_step(block: CalibrationBlock) -> None:
    solve_block(block, gptq_quantease)

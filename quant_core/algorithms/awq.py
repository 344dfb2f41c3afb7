"""AWQ (Lin et al. 2023): activation-aware per-channel scales, then a weight-clipping search.

For each group of linears that share an input (``equalize.ScaleGroup``), scales
``s = x_mean**r / w_mean**(1 - r)`` (AutoAWQ's "duo scaling"; ``x_mean**r`` alone with
``awq_duo_scaling=False``) are tried for ``awq_n_grid`` ratios ``r`` in ``[0, 1)``, and plain
RTN (``s = 1``) is kept if nothing beats it. The objective, as in AutoAWQ, is the output
error of the group's parent module (attention for q/k/v, the MLP for gate/up) on the
first ``awq_parent_batches`` calibration batches; a lone linear (o_proj, down_proj) uses its
exact squared output error over all calibration tokens, ``trace(dW H dW^T)`` with
``H = sum x x^T`` (``InputStats``). The best scales are folded into the producer of the
input. Then each linear searches, per output row and group, how far to shrink the
quantization range (the clipping search: ratios ``1 - i / awq_clip_grid`` while
``i / awq_clip_grid < awq_clip_max_shrink``) with the exact output error restricted to the
group's columns, and is quantized with those ranges into any format of the table.

Measured quality against RTN and the other algorithms: ``benchmarks/results/quality_algorithms.md``.
"""
from __future__ import annotations

import torch

from ..config import QuantConfig
from ..primitives import group_width, grouped, n_groups, output_error, round_trip_groups, stored_qparams
from .base import QuantResult
from .equalize import ScaleGroup, check_group, fold_scales, normalized_scales
from .equalize_blockwise import InputStats, quantize_blockwise
from .rounding import fake_quantize, quantize_clipped

def _w_mean(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean over output rows of |w| relative to its group's max: the weight side of duo scaling."""
    groups = grouped(w.abs(), group_size)
    rel = (groups / (groups.amax(-1, keepdim=True) + 1e-6)).reshape(w.shape[0], -1)[:, :w.shape[1]]
    return rel.mean(0)


def _parent_outputs(group: ScaleGroup) -> list[torch.Tensor]:
    outs = []
    for args, kwargs in group.parent_inputs:
        out = group.parent(*args, **kwargs)
        outs.append(out[0] if isinstance(out, (tuple, list)) else out)
    return outs


@torch.no_grad()
def search_scales(group: ScaleGroup, stats: InputStats, config: QuantConfig) -> tuple[torch.Tensor, list[float]]:
    """Best per-channel scales (``group.n_scales`` entries) and the error of every ratio tried.

    The error is the parent module's output error (attention, MLP: as AutoAWQ, so softmax
    and activations weigh the linears' errors) when the group has recorded parent inputs,
    else the linears' exact output error over all calibration tokens.
    """
    w = group.weight()
    x_mean = group.reduce_mean(stats.abs_mean)
    w_mean = group.reduce_mean(_w_mean(w, config.group_size))
    H = stats.H.to(w.device)
    use_parent = group.parent is not None and bool(group.parent_inputs)
    originals = [lin.weight.detach().clone() for lin in group.linears]
    splits = [lin.out_features for lin in group.linears]
    ref = _parent_outputs(group) if use_parent else None

    def error(w_eff: torch.Tensor) -> float:
        if not use_parent:
            return output_error(w - w_eff, H).item()
        for lin, part in zip(group.linears, w_eff.split(splits)):
            lin.weight.copy_(part.to(lin.weight.dtype))
        return sum((o.float() - r.float()).pow(2).sum().item() for o, r in zip(_parent_outputs(group), ref))

    best_err, best_s, errors = float("inf"), None, []
    try:
        for i in range(config.awq_n_grid):
            r = i / config.awq_n_grid
            s = x_mean.pow(r) / (w_mean.pow(1 - r) + 1e-4) if config.awq_duo_scaling else x_mean.pow(r)
            s = normalized_scales(s)
            s_in = group.expand(s)
            err = error(fake_quantize(w * s_in, config) / s_in)
            errors.append(err)
            if err < best_err:
                best_err, best_s = err, s
        if error(fake_quantize(w, config)) <= best_err:  # duo scaling's r = 0 is not s = 1: keep RTN if better
            best_s = torch.ones(group.n_scales, device=w.device)
    finally:
        for lin, original in zip(group.linears, originals):
            lin.weight.copy_(original)
    return best_s, errors


@torch.no_grad()
def search_clip(w: torch.Tensor, H: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Per ``[row, group]`` range-shrink ratio minimising that group's output error.

    The error of row ``n``, group ``g`` is ``dw H_gg dw^T`` with ``H_gg`` the group's
    diagonal block of ``H``: groups are independent, so each is chosen on its own.
    """
    n, k = w.shape
    gs, g = group_width(k, config.group_size), n_groups(k, config.group_size)
    pad = g * gs - k
    Hp = torch.nn.functional.pad(H.float(), (0, pad, 0, pad))
    blocks = Hp.reshape(g, gs, g, gs).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [G, gs, gs]
    groups = grouped(w.float(), config.group_size)  # [N, G, gs]
    best_err = torch.full((n, g), float("inf"), device=w.device)
    best_ratio = torch.ones(n, g, device=w.device)
    for i in range(int(config.awq_clip_max_shrink * config.awq_clip_grid)):
        ratio = 1 - i / config.awq_clip_grid
        scale, zero = stored_qparams(groups, config.format, config.sym, config.torch_scale_dtype, shrink=ratio)
        dw = groups - round_trip_groups(groups, scale, zero, config.format)
        err = torch.einsum("ngi,gij,ngj->ng", dw, blocks, dw)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio


def awq_block(groups: list[ScaleGroup], stats: dict[str, InputStats], config: QuantConfig) -> dict[str, QuantResult]:
    """Scale, fold, clip and quantize every linear of one block; returns codes per linear name.

    Groups are handled consumer-first (reverse of block order) so that when a group's
    scales are folded into a producer linear, that producer's own group is searched
    on its already-rescaled weights. Groups that nothing can absorb a scale into (a linear
    fed by GELU) keep scales of 1 and only get the clipping search.
    """
    for group in groups:
        check_group(group)
        missing = [n for n in group.names if n not in stats or stats[n].n == 0]
        if missing:
            raise ValueError(f"no calibration inputs were recorded for {missing}")
    for group in reversed(groups):
        if not group.foldable:
            continue
        s, _ = search_scales(group, stats[group.names[0]], config)
        fold_scales(group, s)
        s_in = group.expand(s)
        for st in {id(stats[n]): stats[n] for n in group.names}.values():  # shared objects once
            st.rescale(s_in)
    results = {}
    for group in groups:
        for name, lin in zip(group.names, group.linears):
            w = lin.weight.detach().float()
            results[name] = quantize_clipped(w, config, search_clip(w, stats[name].H.to(w.device), config))
    return results


def quantize_model(model: torch.nn.Module, config: QuantConfig, calibration=None, tokenizer=None,
                   progress: bool = True, device=None, **_) -> torch.nn.Module:
    """``quantize(model, QuantConfig(algorithm="awq"))``: block by block over the calibration data."""
    return quantize_blockwise(model, config, awq_block, calibration, tokenizer, progress=progress,
                              device=device, desc="AWQ", parent_batches=config.awq_parent_batches)

"""TEQ (Cheng et al. 2023, Intel): trainable equivalent-transformation scales.

Per group of linears that share an input, a positive per-channel scale ``s`` is
trained so that the fake-quantized ``Q(W * s) / s`` reproduces the float outputs on
calibration tokens: mini-batches of token rows recorded at the group's input, Adam on
``log s`` (so scales stay positive), rounding passed straight through (STE), starting
from ``s = 1`` (plain RTN). The trained scales are kept only if their exact output
error over all calibration tokens (``trace(dW H dW^T)``) beats ``s = 1``, then folded
like AWQ's (``equalize.fold_scales``) and the weights quantized by round-to-nearest, their ranges
narrowed first by AWQ's clipping search with ``teq_clip_search``.
This trains each group on its own output error, block by block, rather than Intel's
whole-model objective: a few hundred steps cost seconds per block on a CPU.
"""
from __future__ import annotations

import torch

from ..config import QuantConfig
from ..primitives import group_qparams, grouped, output_error, shrunk
from .base import QuantResult
from .clip_search import search_clip
from .driver import CalibrationBlock, calibrated_algorithm
from .equalize import ScaleGroup, equalize_block, scale_groups
from .input_stats import InputStats, collect_input_stats
from .rounding import fake_quantize, quantize_clipped, straight_through


@calibrated_algorithm("teq")
def teq_step(block: CalibrationBlock) -> None:
    """Record the block's inputs (with a token sample per group), then train, fold and install."""
    groups = scale_groups(block.module, block.arch, block.model_config)
    stats = collect_input_stats(block, groups, keep_tokens=block.config.teq_keep_tokens)
    block.install(teq_block(groups, stats, block.config))


def teq_block(groups: list[ScaleGroup], stats: dict[str, InputStats], config: QuantConfig) -> dict[str, QuantResult]:
    """Train, fold and quantize every linear of one block (consumer-first: ``equalize.equalize_block``)."""
    equalize_block(groups, stats, lambda group, i: train_scales(group, stats[group.names[0]], config, seed=i)[0])
    results = {}
    for group in groups:
        for name, lin in zip(group.names, group.linears):
            w = lin.weight.detach().float()
            results[name] = quantize_clipped(w, config, clip_ratios(w, stats[name], config))
    return results


def clip_ratios(w: torch.Tensor, stats: InputStats, config: QuantConfig) -> torch.Tensor | float:
    """Per ``[row, group]`` range ratios by AWQ's clipping search on the folded weights, or 1 (no search)."""
    if not config.teq_clip_search:
        return 1.0
    return search_clip(w, shrunk(stats.H.to(w.device), config.teq_hessian_shrinkage), config)


def fake_quantize_ste(w: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Differentiable quantize-dequantize of ``[N, K]``: group ranges get gradients, rounding is STE."""
    n, k = w.shape
    fmt = config.format
    groups = grouped(w, config.group_size)
    scale, zero = group_qparams(groups, fmt, config.sym)
    x = groups / scale.unsqueeze(-1)
    if fmt.is_codebook:
        levels = fmt.codebook(device=w.device)
        nearest = levels[(x.detach().unsqueeze(-1) - levels).abs().argmin(-1)]
        deq = straight_through(x, nearest) * scale.unsqueeze(-1)
    else:
        z = fmt.sym_zero if zero is None else zero.unsqueeze(-1)
        q = torch.clamp(straight_through(x, torch.round(x)) + z, 0, fmt.max_code)
        deq = (q - z) * scale.unsqueeze(-1)
    return deq.reshape(n, -1)[:, :k]


def train_scales(group: ScaleGroup, stats: InputStats, config: QuantConfig,
                 seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Trained per-channel scales (``group.n_scales``) and the exact errors before/after
    (``config.teq_steps`` Adam steps at ``teq_lr`` on ``teq_batch_tokens`` rows each)."""
    if stats.sample is None:
        raise ValueError("TEQ needs token samples: create InputStats with keep_tokens > 0 (teq_keep_tokens)")
    w = group.weight()
    tokens = stats.sample.to(w.device)
    H = stats.H.to(w.device)
    unseen = config.teq_scale_ridge * H.trace().item() / H.shape[0]  # isotropic part of H (awq.unseen_input_factor)
    log_s = torch.zeros(group.n_scales, device=w.device, requires_grad=True)
    opt = torch.optim.Adam([log_s], lr=config.teq_lr)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(config.teq_steps):
            pick = torch.randint(0, tokens.shape[0], (min(config.teq_batch_tokens, tokens.shape[0]),),
                                 generator=gen)
            xb = tokens[pick.to(tokens.device)]
            s_in = group.expand(log_s.exp())
            dw = w - fake_quantize_ste(w * s_in, config) / s_in
            loss = batch_error(xb, dw, config.teq_hessian_shrinkage) + unseen / stats.n * dw.pow(2).sum() / w.shape[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        s = log_s.detach().exp()
        check = checking_hessian(stats, config) + unseen * torch.eye(H.shape[0], device=w.device)
        trained = output_error(w - fake_quantize(w * group.expand(s), config) / group.expand(s), check).item()
        identity = output_error(w - fake_quantize(w, config), check).item()
    if identity <= trained:
        s = torch.ones_like(s)
    return s, {"rtn_error": identity, "teq_error": trained}


def checking_hessian(stats: InputStats, config: QuantConfig) -> torch.Tensor:
    """``sum x x^T`` over the tokens that decide whether trained scales beat ``s = 1``: all
    calibration tokens, or with ``teq_scale_check="held_out"`` those TEQ did not train on (the
    sample's rows taken out), so scales that only fit their training rows fall back to RTN's."""
    if config.teq_scale_check == "all":
        return shrunk(stats.H, config.teq_hessian_shrinkage)
    sample = stats.sample.to(stats.H.device)
    return shrunk(stats.H - sample.T @ sample, config.teq_hessian_shrinkage)


def batch_error(xb: torch.Tensor, dw: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """Mean squared output error of ``dw`` on the rows ``xb``, their Gram matrix blended with its
    diagonal by ``shrinkage`` (``primitives.shrunk``): ``trace(dw G dw^T) / (rows * outputs)``."""
    full = (xb @ dw.T).pow(2).mean()
    if shrinkage == 0:
        return full
    diagonal = (xb.pow(2).sum(0) * dw.pow(2)).sum() / (xb.shape[0] * dw.shape[0])
    return (1 - shrinkage) * full + shrinkage * diagonal


"""GPTQ (Frantar et al. 2022): quantize a weight column by column, spreading each column's
rounding error over the columns not yet quantized, weighted by the inverse Hessian of
the layer's reconstruction loss (``H = 2/n * sum x x^T`` over calibration inputs).

* Lazy batches: errors are applied inside a block of ``block_size`` columns at once and
  to the remaining columns once per block (same result, far fewer memory passes).
* Damping: ``damp_percent * mean(diag H)`` is added to the diagonal; when the Cholesky
  factorisation still fails the damping is raised tenfold (up to 3 times) with a warning.
* ``act_order``: columns go in order of decreasing ``diag(H)``; groups are then formed in
  that order and each column's group is recorded in ``g_idx``, unless ``static_groups``
  fixes every group's scale (on the unquantized weight, in the natural column order)
  before reordering, which needs no ``g_idx`` at inference.
* Every format of the table: int (sym/asym, int2..int8) rounds to the grid, codebook
  formats (nf4, fp4_e2m1) to the nearest level; scales are rounded to the stored scale
  dtype first, so codes fit the scales that will be saved. ``mse_clip`` searches each
  group's clipping ratio when its scale is chosen.

``gptq(weight, hessian, config)`` returns a ``QuantResult`` and never packs; ``gptq_step``
runs it on one block for the calibration driver (``driver.py``), in true-sequential order
when ``config.true_sequential``, with the Hessians of ``hessians.py`` (by default v_proj's and
down_proj's weigh each token by how much the model's output depends on it there: issue 16).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch

from ..config import QuantConfig
from ..primitives import dequantize_groups, group_width, n_groups, per_channel, quantize_groups, quantize_weight
from .module_replay import replay_plan, replayed_modules
from .base import QuantResult
from .driver import CalibrationBlock, calibrated_algorithm
from .hessians import Hessian, block_hessians, hessian_for
from .threads import one_thread

log = logging.getLogger("quant_core")

DAMP_RETRIES = 3


def inverse_cholesky(h: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * I)^-1``, raising the damping until it exists."""
    damp = damp_percent
    for attempt in range(DAMP_RETRIES + 1):
        hd = h.clone()
        hd.diagonal().add_(damp * torch.mean(torch.diag(h)))
        try:
            lower = torch.linalg.cholesky(hd)
            hinv = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(hinv, upper=True)
        except torch.linalg.LinAlgError:
            if attempt == DAMP_RETRIES:
                break
            log.warning("GPTQ: Hessian not positive definite with damp_percent=%g; retrying with %g",
                        damp, damp * 10)
            damp *= 10
    raise torch.linalg.LinAlgError(
        f"GPTQ: the Hessian stays singular up to damp_percent={damp:g}; the calibration data may "
        f"not reach this layer's inputs: use more or longer samples, or algorithm='rtn'")


def act_order_permutation(h: torch.Tensor) -> torch.Tensor:
    """Columns by decreasing ``diag(H)``; stable, so algorithms that start from GPTQ's codes
    (``gptq_quantease``) reproduce its order."""
    return torch.sort(torch.diag(h), descending=True, stable=True).indices


def _qparams(w: torch.Tensor, config: QuantConfig):
    """Scale and zero point ``[N]`` for the columns ``w [N, k]`` forming one group."""
    _, scale, zero = quantize_weight(w, config.format, -1, config.sym, mse_clip=config.mse_clip,
                                     scale_dtype=config.torch_scale_dtype)
    return scale[:, 0], None if zero is None else zero[:, 0]


def gptq(weight: torch.Tensor, hessian: torch.Tensor, config: QuantConfig) -> QuantResult:
    """GPTQ of one ``[N, K]`` weight with the ``[K, K]`` Hessian of its inputs (see module docstring)."""
    fmt = config.format
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone().to(w.device)
    n, k = w.shape
    if h.shape != (k, k):
        raise ValueError(f"GPTQ: Hessian of shape {tuple(h.shape)} does not match a weight with {k} inputs")
    gs, g_count = group_width(k, config.group_size), n_groups(k, config.group_size)
    dynamic = not per_channel(config.group_size) and not (config.act_order and config.static_groups)

    dead = torch.diag(h) == 0  # inputs that were always zero: any value works, 0 is exact
    h[dead, dead] = 1
    w[:, dead] = 0

    scales = torch.zeros(n, g_count, dtype=torch.float32, device=w.device)
    zeros = None if config.sym else torch.zeros_like(scales)
    if not dynamic:  # per-channel, or static groups: qparams from the unquantized weight
        for g in range(g_count):
            s, z = _qparams(w[:, g * gs:(g + 1) * gs], config)
            scales[:, g] = s
            if zeros is not None:
                zeros[:, g] = z

    perm = act_order_permutation(h) if config.act_order else None
    if perm is not None:
        w, h = w[:, perm], h[perm][:, perm]
    col_group = (perm if perm is not None else torch.arange(k, device=w.device)) // gs  # static lookup

    hinv = inverse_cholesky(h, config.damp_percent)
    codes = torch.zeros(n, k, dtype=torch.uint8, device=w.device)
    bs = config.block_size
    for i1 in range(0, k, bs):
        i2 = min(i1 + bs, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if dynamic:
                g = col // gs
                if col % gs == 0:  # a new group starts: its scale from the current (updated) weights
                    end = min(col + gs, k)
                    part = w1[:, i:end - i1]
                    if end > i2:  # columns past this block still owe this block's updates
                        pending = w[:, i2:end] - err1 @ hinv[i1:i2, i2:end]
                        part = torch.cat([part, pending], 1)
                    s, z = _qparams(part, config)
                    scales[:, g] = s
                    if zeros is not None:
                        zeros[:, g] = z
            else:
                g = int(col_group[col])
            s = scales[:, g]
            z = None if zeros is None else zeros[:, g]
            c = quantize_groups(w1[:, i:i + 1], s, z, fmt)
            q = dequantize_groups(c, s, z, fmt)[:, 0]
            codes[:, col] = c[:, 0]
            e = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i + 1:] -= e.unsqueeze(1) * hinv1[i, i + 1:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]

    g_idx = None
    if perm is not None:
        inv = torch.argsort(perm)
        codes = codes[:, inv]
        if dynamic:  # group j // gs of the reordered columns, mapped back to each original column
            g_idx = (torch.arange(k, device=w.device) // gs)[inv].to(torch.int32)
    return QuantResult(codes, scales, zeros, g_idx)



Solver = Callable[[torch.Tensor, torch.Tensor, QuantConfig], QuantResult]


@calibrated_algorithm("gptq")
def gptq_step(block: CalibrationBlock) -> None:
    solve_block(block, gptq)


def solve_block(block: CalibrationBlock, solve: Solver) -> None:
    """Quantize every linear group of one block with ``solve(weight, hessian, config)``, from
    the Hessian of the group's input (GPTQ, QuantEase). In true-sequential order each group's
    inputs are recorded after the groups before it were installed, so it sees their quantized
    outputs."""
    groups = block.linear_groups()
    if block.config.true_sequential:
        plan = replay_plan(groups, replayed_modules(block.arch))
        for i, names in enumerate(groups):
            for module, projection in plan.get(i, []):
                block.replay_module(module, projection)
            _quantize_group(block, names, block_hessians(block, [names], stop=True), solve)
        for module, projection in plan.get(len(groups), []):  # the block outputs' forward
            block.replay_module(module, projection)
    else:
        hessians = block_hessians(block, groups, stop=False)
        for names in groups:
            _quantize_group(block, names, hessians, solve)


def _quantize_group(block: CalibrationBlock, names: list[str], hessians: dict[str, Hessian],
                    solve: Solver) -> None:
    device = next(iter(hessians.values())).matrix.device
    with one_thread() if device.type == "cpu" else contextlib.nullcontext():
        results = {name: solve(block.module.get_submodule(name).weight, hessian_for(block, name, names, hessians),
                               block.config)
                   for name in names}
    block.install(results)

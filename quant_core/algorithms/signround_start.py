"""SignRound started from a layer solver's solution (``config.signround_start``, issue 19).

The solver (GPTQ or QuantEase, at their settings' defaults) quantizes every linear of the block from the
Hessians of its inputs on the block's calibration inputs, all recorded on the block as it stands (no
true-sequential order: this is only a start) and never installed: SignRound trains from the float weights.
Its solution becomes SignRound's starting point in SignRound's own parameters:

* ranges: each group's range is the wider of the float weight's and the one the solver's scale (and zero
  point) spans; the range factors start at the solver's share of it and may narrow to ``RANGE_MIN`` of it,
  or to the start if the solver narrowed further. GPTQ sets its scales on error-compensated weights, whose
  range may exceed the float weight's, hence the wider base;
* offsets: a constant ``V0`` puts every weight on the solver's code (``s, z`` the start's stored scale and
  zero point), possibly further than half a code from ``W / s``; the trained offset moves around it in
  [-0.5, 0.5] as from RTN. ``signround_start_offset``: "centre", ``V0 = q - z - W / s``, the middle of the
  code's rounding interval (a code then changes only if the offset travels half a code one way, about all a
  run's steps allow); "nearest", the point of the interval nearest ``W / s`` (where the solver kept RTN's
  code, ``V0 = 0``: as from RTN).

Before training the result is the solver's codes bit for bit (scales too where they are stored in fp16 or
bf16: the factors reproduce the start's scale to a few fp32 ulps, which the stored dtype rounds away).
"""
from __future__ import annotations

import contextlib

import torch

from ..config import QuantConfig
from ..primitives import group_qparams, grouped
from .base import QuantResult
from .driver import CalibrationBlock
from .gptq import gptq
from .hessians import block_hessians, hessian_for
from .quantease import quantease
from .threads import one_thread

SOLVERS = {"gptq": gptq, "quantease": quantease}


def solver_starts(block: CalibrationBlock) -> dict[str, QuantResult]:
    """The solver's result for every linear of the block, from the block's current weights."""
    groups = block.linear_groups()
    hessians = block_hessians(block, groups, stop=False)
    solve = SOLVERS[block.config.signround_start]
    device = next(iter(hessians.values())).matrix.device
    with one_thread() if device.type == "cpu" else contextlib.nullcontext():
        return {name: solve(block.module.get_submodule(name).weight, hessian_for(block, name, names, hessians),
                            block.config)
                for names in groups for name in names}


def _share(part: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """``part / whole``, 1 where the whole is 0 (the factor then multiplies nothing)."""
    return torch.where(whole == 0, torch.ones_like(part), part / torch.where(whole == 0, 1.0, whole))


def start_range(groups: torch.Tensor, start: QuantResult, config: QuantConfig):
    """(range_groups ``[N, G, m]``, top ``[N, G]``, bottom ``[N, G]`` or None): the groups whose range the
    factors scale (``LearnedRounding.qparams`` reads their max and min) and the factors that give the
    start's scale and zero point."""
    fmt, s0 = config.format, start.scales.float()
    if config.sym:
        # group_qparams maps a range extreme e to the scale e / q: scales are proportional to the extreme
        q = fmt.qmax if fmt.qmin == -fmt.qmax else fmt.qmin
        s1, _ = group_qparams(groups, fmt, True)
        base = torch.where((s1 * s0 > 0) & (s1.abs() > s0.abs()), s1, s0)
        return (base * q).unsqueeze(-1), _share(s0, base), None
    z0 = start.zeros.float()
    high0, low0 = s0 * (fmt.max_code - z0), -s0 * z0
    high = torch.maximum(groups.amax(-1).clamp_min(0), high0)
    low = torch.minimum(groups.amin(-1).clamp_max(0), low0)
    return torch.stack([high, low], -1), _share(high0, high), _share(low0, low)


def start_offset(groups: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                 config: QuantConfig) -> torch.Tensor:
    """``V0`` ``[N, G, gs]`` for the start's ``codes [N, K]`` on the stored ``scale``/``zero`` ``[N, G]``, so that
    ``round(W / s + V0) + z`` is ``q``: ``q - z - W / s`` (``signround_start_offset="centre"``), or the least
    shift that gets there ("nearest")."""
    z = config.format.sym_zero if zero is None else zero.unsqueeze(-1)
    at = groups / scale.unsqueeze(-1)
    code = grouped(codes.float(), config.group_size) - z
    if config.signround_start_offset == "centre":
        return code - at
    return torch.minimum(torch.maximum(at, code - EDGE), code + EDGE) - at


EDGE = 0.5 - 1e-2  # "nearest": how far from its code's centre a weight may start (just inside the interval)

"""SignRound (Cheng et al. 2023, arXiv 2309.05516): learned rounding by signed gradient descent.

Per decoder block, every quantized linear gets a rounding offset ``V`` in [-0.5, 0.5] per weight
and range factors in [0.5, 1] per group (symmetric: one factor on the group's largest magnitude;
asymmetric: one on its maximum and one on its minimum), so a weight computes as
``s * (clamp(round(W / s + V) + z) - z)`` with ``s, z`` from the narrowed range. They are trained for
``config.signround_steps`` steps on the mean squared error between the block's outputs and the
float block's on the same inputs (the driver's: the outputs of the quantized blocks before it) or,
with ``signround_target="float_model"``, the float model's own hidden states there (AutoRound's),
one random mini-batch of ``signround_batch_windows`` windows per step (with
``signround_token_weighting`` each token's error weighed as the next RMSNorm will scale it), rounding
passed straight through (STE). Each step moves every parameter by ``lr * sign(gradient)`` (the gradient's size
says little once rounding is in the loss), the rate decaying linearly from ``signround_lr``
(``1 / steps`` by default: over the run an offset moves by up to half a code) to 0.

With ``signround_start`` "gptq" or "quantease" the offsets and range factors start at a layer
solver's solution instead of RTN's (``signround_start.py``).

The parameters of the step with the lowest mini-batch loss are kept and rounded once, scales to
their stored dtype; they replace RTN's (and the solver's start) only if the block's error over all
calibration windows is lower, so no block ends worse than its start on its calibration inputs. Forwards run in the calibration
precision (bf16 autocast where ``calibration_dtype`` resolves to it); parameters and gradients are
fp32. Integer formats only: ``QuantConfig`` refuses codebook formats (nf4, fp4) for SignRound.
"""
from __future__ import annotations

import logging
import math

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from ..calibration import forward_precision
from ..config import QuantConfig
from ..primitives import group_qparams, grouped, stored_scale
from .base import QuantResult
from .driver import CalibrationBlock, calibrated_algorithm
from .rounding import straight_through
from .rtn import rtn
from .signround_start import solver_starts, start_offset, start_range

log = logging.getLogger("quant_core")

RANGE_MIN = 0.5  # the narrowest range factor (the paper's [0.5, 1])
OFFSET_MAX = 0.5  # |V|: half a code either way, so any weight can reach both neighbouring codes


class LearnedRounding:
    """One linear's trainable rounding: offsets ``[N, G, gs]`` and range factors ``[N, G]``, around RTN or
    around a ``start`` (a solver's result: ``signround_start.py``)."""

    def __init__(self, weight: torch.Tensor, config: QuantConfig, start: QuantResult | None = None):
        self.config = config
        self.shape, self.dtype = weight.shape, weight.dtype
        self.groups = grouped(weight.detach().float(), config.group_size)  # [N, G, gs], zero-padded
        n, g, _ = self.groups.shape
        self.range_groups = self.groups  # whose max and min the range factors scale
        top = torch.ones(n, g, device=weight.device)
        bottom = None if config.sym else torch.ones_like(top)
        if start is not None:
            self.range_groups, top, bottom = start_range(self.groups, start, config)
        self.floors = [f.clamp(max=RANGE_MIN) for f in (top, bottom) if f is not None]
        self.top = top.requires_grad_()
        self.bottom = None if bottom is None else bottom.requires_grad_()
        self.start_offset = torch.zeros_like(self.groups)  # V0: the offset the trained one moves around
        if start is not None:
            self.start_offset = start_offset(self.groups, start.codes, *self.stored_qparams(), config)
        self.offset = torch.zeros_like(self.groups, requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        return [p for p in (self.offset, self.top, self.bottom) if p is not None]

    def qparams(self):
        """Scale and zero point ``[N, G]`` of the narrowed ranges (differentiable)."""
        fmt = self.config.format
        if self.bottom is None:
            return group_qparams(self.range_groups, fmt, True, shrink=self.top)
        wmax = (self.range_groups.amax(-1) * self.top).clamp_min(0)
        wmin = (self.range_groups.amin(-1) * self.bottom).clamp_max(0)
        scale = ((wmax - wmin) / fmt.max_code).clamp_min(1e-10)
        zero = straight_through(-wmin / scale, torch.round(-wmin / scale)).clamp(0, fmt.max_code)
        return scale, zero

    @torch.no_grad()
    def stored_qparams(self):
        """``qparams`` with the scales rounded to their stored dtype (what the codes are computed on)."""
        scale, zero = self.qparams()
        return stored_scale(scale, self.config.torch_scale_dtype), None if zero is None else zero.detach()

    def fake_weight(self) -> torch.Tensor:
        """The ``[N, K]`` weight the linear computes with (in its dtype), differentiable in the parameters."""
        scale, zero = self.qparams()
        q, z = self._grid_codes(scale, zero, lambda x: straight_through(x, torch.round(x)))
        return ((q - z) * scale.unsqueeze(-1)).reshape(self.shape[0], -1)[:, :self.shape[1]].to(self.dtype)

    def _grid_codes(self, scale: torch.Tensor, zero: torch.Tensor | None, rounding):
        """Codes ``[N, G, gs]`` (float) of the weights plus the offsets on ``scale`` / ``zero``, rounded by
        ``rounding``, and the zero point they sit around."""
        fmt = self.config.format
        z = fmt.sym_zero if zero is None else zero.unsqueeze(-1)
        x = self.groups / scale.unsqueeze(-1) + self.start_offset + self.offset
        return torch.clamp(rounding(x) + z, 0, fmt.max_code), z

    @torch.no_grad()
    def descend(self, grads: list[torch.Tensor], lr: float) -> None:
        """One signed-gradient step, each parameter kept in its range."""
        for p, g in zip(self.parameters(), grads):
            p.sub_(lr * g.sign())
        self.offset.clamp_(-OFFSET_MAX, OFFSET_MAX)
        for factor, floor in zip(self.parameters()[1:], self.floors):
            factor.clamp_(min=floor).clamp_(max=1.0)

    @torch.no_grad()
    def result(self) -> QuantResult:
        """Codes with the learned offsets, on scales rounded to their stored dtype."""
        scale, zero = self.stored_qparams()
        codes, _ = self._grid_codes(scale, zero, torch.round)
        codes = codes.to(torch.uint8).reshape(self.shape[0], -1)[:, :self.shape[1]]
        return QuantResult(codes, scale, None if zero is None else zero.clone())


def _rows_of(value, rows: torch.Tensor, batch: int):
    """``value`` (a block argument) for the windows ``rows`` of a batch of ``batch``: tensors whose
    leading dimension is the batch are sliced (masks, per-window rotary tables); others kept."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.dim() >= 2 and value.shape[0] == batch and batch > 1 else value
    if isinstance(value, tuple):
        return tuple(_rows_of(v, rows, batch) for v in value)
    if isinstance(value, list):
        return [_rows_of(v, rows, batch) for v in value]
    if isinstance(value, dict):
        return {k: _rows_of(v, rows, batch) for k, v in value.items()}
    return value


def _minibatch(block: CalibrationBlock, targets: list[torch.Tensor], windows: int, gen: torch.Generator):
    """(hidden, args, kwargs, target) of ``windows`` random windows of one random calibration batch."""
    i = int(torch.randint(len(targets), (1,), generator=gen))
    hidden = block.inputs.hidden[i]
    batch = hidden.shape[0]
    if windows >= batch:
        return hidden, block.inputs.args[i], block.inputs.kwargs[i], targets[i]
    rows = torch.randperm(batch, generator=gen)[:windows].sort().values.to(hidden.device)
    return (hidden[rows], _rows_of(block.inputs.args[i], rows, batch), _rows_of(block.inputs.kwargs[i], rows, batch),
            targets[i][rows])


def _block_output(block: CalibrationBlock, weights: dict[str, torch.Tensor], hidden, args, kwargs) -> torch.Tensor:
    """The block's first output with the named linears computing with ``weights``."""
    out = functional_call(block.module, {f"{name}.weight": w for name, w in weights.items()},
                          (hidden, *args), kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def output_loss(out: torch.Tensor, target: torch.Tensor, token_weighting: bool) -> torch.Tensor:
    """Mean squared error of ``out`` against ``target`` ``[..., hidden]``; with ``token_weighting`` each
    token's error divided by its target's mean square, as the next RMSNorm will scale it (the
    attention-sink token's hidden state is hundreds of times larger than the others')."""
    err = (out.float() - target).pow(2)
    if token_weighting:
        err = err / target.pow(2).mean(-1, keepdim=True).clamp_min(1e-12)
    return err.mean()


@torch.no_grad()
def block_error(block: CalibrationBlock, weights: dict[str, torch.Tensor], targets: list[torch.Tensor]) -> float:
    """``output_loss`` of the block's outputs over every calibration window, against ``targets``."""
    total, count = 0.0, 0
    with forward_precision(block.config, block.inputs.hidden[0].device):
        for hidden, args, kwargs, target in zip(block.inputs.hidden, block.inputs.args, block.inputs.kwargs, targets):
            out = _block_output(block, weights, hidden, args, kwargs)
            total += output_loss(out, target, block.config.signround_token_weighting).item() * target.numel()
            count += target.numel()
    return total / count


def train(block: CalibrationBlock, roundings: dict[str, LearnedRounding], targets: list[torch.Tensor]) -> float:
    """Signed gradient descent on every rounding of the block (module docstring); leaves each at its
    best mini-batch step and returns that step's loss."""
    config = block.config
    steps = config.signround_steps
    lr0 = config.signround_lr or 1.0 / steps
    params = [p for r in roundings.values() for p in r.parameters()]
    gen = torch.Generator().manual_seed(block.index)
    best_loss, best = math.inf, [p.detach().clone() for p in params]
    device = block.inputs.hidden[0].device
    for step in tqdm(range(steps), desc=f"SignRound block {block.index}", unit="step", leave=False,
                     disable=not block.progress):
        hidden, args, kwargs, target = _minibatch(block, targets, config.signround_batch_windows, gen)
        with torch.enable_grad(), forward_precision(config, device):
            weights = {name: r.fake_weight() for name, r in roundings.items()}
            loss = output_loss(_block_output(block, weights, hidden, args, kwargs), target,
                               config.signround_token_weighting)
        grads = torch.autograd.grad(loss, params)
        if loss.item() < best_loss:  # the parameters this loss was measured with, before the step
            best_loss, best = loss.item(), [p.detach().clone() for p in params]
        lr = lr0 * (1 - step / steps)
        at = 0
        for r in roundings.values():
            count = len(r.parameters())
            r.descend(list(grads[at:at + count]), lr)
            at += count
    with torch.no_grad():
        for p, kept in zip(params, best):
            p.copy_(kept)
    return best_loss


FLOAT_HIDDEN = "signround_float_hidden"  # run_state key: the float model's inputs of the next block


@torch.no_grad()
def float_targets(block: CalibrationBlock) -> list[torch.Tensor]:
    """What the block's outputs are trained towards (``config.signround_target``): the float block's
    outputs on the driver's inputs, or on the float model's own inputs of this block (carried from
    block to block in ``run_state``; block 0's inputs are the same for both, nothing before it is
    quantized)."""
    hidden = None
    if block.config.signround_target == "float_model" and block.index > 0:
        hidden = block.run_state[FLOAT_HIDDEN]
    with forward_precision(block.config, block.inputs.hidden[0].device):
        targets = [out.float() for out in block.inputs.forward(block.module, hidden=hidden)]
    if block.config.signround_target == "float_model":
        block.run_state[FLOAT_HIDDEN] = [t.to(h.dtype) for t, h in zip(targets, block.inputs.hidden)]
    return targets


def signround_block(block: CalibrationBlock) -> tuple[dict[str, QuantResult], dict[str, float]]:
    """The codes of every linear of one block, and the block's output loss (``output_loss``) over all its
    calibration windows with each candidate: RTN's codes, the trained ones and, with a solver's start,
    the start's (``{"rtn": ..., "start": ..., "signround": ...}``). The lowest wins, ties to the trained."""
    config = block.config
    names = [name for group in block.linear_groups() for name in group]
    linears = {name: block.module.get_submodule(name) for name in names}
    starts = solver_starts(block) if config.signround_start != "rtn" else {}
    targets = float_targets(block)
    roundings = {name: LearnedRounding(lin.weight, config, starts.get(name)) for name, lin in linears.items()}
    train(block, roundings, targets)
    candidates = {"signround": {name: r.result() for name, r in roundings.items()}, "start": starts,
                  "rtn": {name: rtn(lin.weight, config) for name, lin in linears.items()}}
    candidates = {label: results for label, results in candidates.items() if results}
    errors = {label: block_error(block, {n: r.pack(config).dequantize(linears[n].weight.dtype)
                                         for n, r in results.items()}, targets)
              for label, results in candidates.items()}
    log.info("SignRound block %d: output MSE %s", block.index, ", ".join(f"{k} {v:.4g}" for k, v in errors.items()))
    return candidates[min(candidates, key=errors.get)], errors


@calibrated_algorithm("signround")
def signround_step(block: CalibrationBlock) -> None:
    results, _ = signround_block(block)
    block.install(results)

"""The Hessians GPTQ and QuantEase solve with, collected on a block's calibration forward.

A layer's plain Hessian ``2/n * sum x x^T`` counts every calibration token once. Two linears
matter to the model out of proportion to that count, and each gets its own Hessian (issue 16,
``docs/gptq_ood_notes.md``; ``config.token_weighting``):

* the value projection: its output at token ``k`` is read by every query in proportion to
  ``a[q, k]``, so token ``k`` is weighted by ``sum_q a[q, k]**2`` (``attention_mass.py``): the
  attention-sink token, read by nearly every position, gets the weight it has on the outputs;
* the MLP's output projection: its error at token ``t`` joins the residual stream ``r_t`` and
  reaches the next RMSNorm divided by ``rms(r_t)``, so token ``t`` is weighted by
  ``1 / mean(r_t**2)``: the sink token's residual is hundreds of times larger than the others'
  and no longer decides the fit.

The MLP's output projection reads the most text-specific inputs (the wide, sparse MLP
activations), and its cross-channel correlations on the calibration text do not carry over to
other text: its Hessian is blended with its diagonal, ``(1 - s) H + s diag(H)`` with
``s = config.mlp_out_shrinkage`` (``s = 1`` rounds every column on its own, like RTN). GPTQ blends
every other linear's Hessian likewise with ``config.hessian_shrinkage``: its error feedback spreads
each rounding error along the calibration text's correlations, which other text does not share.
"""
from __future__ import annotations

import contextlib
import math

import torch

from ..blocks import record_inputs
from ..calibration import calibration_dtype_on, forward_precision, statistics_rows
from ..config import ALGORITHM_SETTINGS
from ..kernels.cpu_gram import accumulate_gram, gram_kernel_reason
from ..primitives import shrunk
from .attention_mass import recording_attention_mass
from .driver import CalibrationBlock


class Hessian:
    """Running ``2/n * sum x x^T`` over the rows of every input seen (float32, on x's device).

    ``bf16``: the inputs of a bf16 calibration forward (``calibration_dtype``) are summed from bf16
    (rounded to it if they come as fp32: what the forward's linears compute with) by the CPU kernel
    ``cpu_gram`` (one triangle, exact bf16 products, fp32 sums): ~3.5x fp32 ``addmm_`` per thread.
    Elsewhere, or without the kernel, fp32 ``addmm_`` as before.
    """

    def __init__(self, in_features: int, device=None, bf16: bool = False):
        self.matrix = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n = 0
        self.bf16_gram = bf16 and not gram_kernel_reason(self.matrix)

    def add(self, x: torch.Tensor, token_weights: torch.Tensor | None = None) -> None:
        """``token_weights`` (one per row of ``x``, e.g. ``[batch, seq]``) weigh each row's ``x x^T``."""
        x = x.detach().reshape(-1, x.shape[-1])
        m = x.shape[0]
        self.matrix *= self.n / (self.n + m)
        self.n += m
        if self.bf16_gram:
            if token_weights is not None:  # rounded to bf16 with x: one rounding, as x itself had
                x = x.float() * token_weights.detach().reshape(-1, 1).float().sqrt()
            accumulate_gram(self.matrix, x, 2 / self.n)
            return
        x = x.float() * math.sqrt(2 / self.n)
        if token_weights is not None:
            x = x * token_weights.detach().reshape(-1, 1).float().sqrt()
        with torch.autocast(x.device.type, enabled=False):  # fp32 sums, also inside bf16 calibration forwards
            self.matrix.addmm_(x.t(), x)


class _Stop(Exception):
    """Raised from a hook: the rest of the block's forward is not needed."""


def weighted_key(name: str) -> str:
    return f"{name} (token-weighted)"


def block_hessians(block: CalibrationBlock, groups: list[list[str]], stop: bool) -> dict[str, Hessian]:
    """Hessian of each group's input (keyed by its first name) over the block's inputs, plus the
    token-weighted ones (keyed ``weighted_key(linear)``, see the module docstring); with ``stop``
    the forward ends as soon as everything asked for is in."""
    hessians, skip = {}, block.config.calibration_skip_tokens
    weighted = _weighted_linears(block, groups)  # linear -> "attention" | "residual"
    feeds = {names[0]: [n for n in names if n in weighted] for names in groups}
    # a group whose every linear has its own weighted Hessian (down_proj) never reads the plain one,
    # the largest of a block (intermediate_size squared): not accumulated
    plain = {names[0]: any(n not in weighted for n in names) for names in groups}
    pending: dict[str, torch.Tensor] = {}  # a weighted linear's input, until its weights are known
    bf16 = calibration_dtype_on(block.config, block.inputs.hidden[0].device) == "bf16"

    def add(name, x):
        x = statistics_rows(x, skip)
        if plain[name]:
            _hessian(hessians, name, x, bf16).add(x)
        pending.update({linear: x for linear in feeds[name]})
        if stop and not pending:
            raise _Stop

    def add_weighted(kind, weights):
        for linear in [n for n in pending if weighted[n] == kind]:
            x = pending.pop(linear)
            _hessian(hessians, weighted_key(linear), x, bf16).add(x, statistics_rows(weights[..., None], skip))
        if stop and not pending:
            raise _Stop

    probes = contextlib.ExitStack()
    if "attention" in weighted.values():
        probes.enter_context(recording_attention_mass(block.module.get_submodule(block.arch.attention),
                                                      lambda mass: add_weighted("attention", mass)))
    if "residual" in weighted.values():
        hook = block.module.register_forward_hook(
            lambda _m, _a, out: add_weighted("residual", _inverse_mean_square(out)))
        probes.callback(hook.remove)
    with record_inputs(block.module, [names[0] for names in groups], add), probes, torch.no_grad(), \
            forward_precision(block.config, block.inputs.hidden[0].device):
        for h, args, kwargs in zip(block.inputs.hidden, block.inputs.args, block.inputs.kwargs):
            try:
                block.module(h, *args, **kwargs)
            except _Stop:
                pass
    return hessians


def hessian_for(block: CalibrationBlock, name: str, group: list[str], hessians: dict[str, Hessian]) -> torch.Tensor:
    """The matrix ``name`` is solved with: its token-weighted Hessian if it has one, else its
    group's; blended with its diagonal (the MLP output projection by its own amount)."""
    h = (hessians.get(weighted_key(name)) or hessians[group[0]]).matrix
    config = block.config
    if name == block.arch.mlp_output:
        s = config.mlp_out_shrinkage
    else:
        s = config.hessian_shrinkage if "hessian_shrinkage" in ALGORITHM_SETTINGS[config.algorithm] else 0.0
    return shrunk(h, s)


def _hessian(hessians: dict[str, Hessian], key: str, x: torch.Tensor, bf16: bool) -> Hessian:
    if key not in hessians:
        hessians[key] = Hessian(x.shape[-1], x.device, bf16)
    return hessians[key]


def _weighted_linears(block: CalibrationBlock, groups: list[list[str]]) -> dict[str, str]:
    if not block.config.token_weighting:
        return {}
    arch, present = block.arch, {n for names in groups for n in names}
    kinds = {arch.value: "attention", arch.mlp_output: "residual"}
    return {name: kind for name, kind in kinds.items() if name is not None and name in present}


def _inverse_mean_square(out) -> torch.Tensor:
    residual = out[0] if isinstance(out, (tuple, list)) else out
    return 1.0 / residual.float().pow(2).mean(-1).clamp_min(torch.finfo(torch.float32).tiny)

"""Replay a finished sub-module's outputs in a block's later calibration forwards.

In true-sequential order (GPTQ, QuantEase) a block runs once per linear group, each time up to
the group's input, and once more for its outputs. Once every linear inside a sub-module (the
attention, the MLP) is installed and the groups before it are, its outputs no longer change:
the forwards after that take the outputs the first of them computed, per calibration batch,
instead of recomputing them. One step earlier, while its output projection (o_proj, down_proj)
is the group being solved, that forward records the projection's inputs, which are final then,
and the next forward computes the sub-module's output as ``projection(input)``. On SmolLM2 this
runs q/k/v, the rotary embeddings and the attention 2 times per block and batch instead of 5, and
gate/up once less (the attention is about half of a block's forward: 70 of 133 ms per batch of 8
windows of 512 tokens, bf16).

A batch is known by its hidden-state tensor (the block is always called with the same objects
from ``BlockInputs.hidden``); a call outside such a forward runs the sub-module as usual. Only its
first output is kept; what some attentions return beside it (probabilities), which calibration
never reads, is replayed as None.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ModuleReplay:
    """Records, then replays, ``module``'s outputs per calibration batch of ``block`` (a batch is
    one tensor of ``hidden``); ``close`` gives the modules back as they were.

    With ``projection`` (the module's output linear, not installed yet) it starts one step
    earlier: the forward that collects the projection's statistics records its inputs, and the
    next forward computes the module's output as ``projection(input)``. That shortcut is checked
    against the real module on the first batch and dropped (the module computed) where they
    differ, e.g. a module that changes its projection's output before returning it."""

    def __init__(self, block: nn.Module, module: nn.Module, hidden: list[torch.Tensor],
                 projection: nn.Module | None = None):
        self._batch_of = {id(h): i for i, h in enumerate(hidden)}
        self._hidden = hidden  # keeps the tensors, and so their ids, alive
        self._current: int | None = None  # the batch of the block call under way
        self._current_module: int | None = None  # the batch of the module call under way
        self._outputs: dict[int, torch.Tensor] = {}  # batch -> the module's (first) output
        self._length = 0  # the module returns a tuple of this length (0: a tensor)
        self._module, self._projection = module, projection
        self._projected: dict[int, torch.Tensor] = {}  # batch -> the projection's input
        self._recording = projection is not None  # projection's inputs, until projection_final
        self._checked = False
        self._handles = [block.register_forward_pre_hook(self._enter_block)]
        if projection is not None:
            self._handles.append(projection.register_forward_pre_hook(self._projection_input))
        self._original = module.forward
        module.forward = self._forward

    def projection_final(self) -> None:
        """The projection is installed: from the next forward on, replay."""
        self._recording = False

    def _enter_block(self, _module, args) -> None:
        self._current = self._batch_of.get(id(args[0])) if args else None

    def _projection_input(self, _module, args) -> None:
        if self._recording and self._current_module is not None:
            self._projected[self._current_module] = args[0].detach()

    def _forward(self, *args, **kwargs) -> Any:
        batch, self._current = self._current, None  # one module call per block call
        self._current_module = batch
        try:
            if batch is None or self._recording:
                return self._original(*args, **kwargs)
            if batch not in self._outputs:
                self._outputs[batch] = self._compute(batch, args, kwargs)
        finally:
            self._current_module = None
        first = self._outputs[batch].clone()  # the caller may change its copy in place
        return (first,) + (None,) * (self._length - 1) if self._length else first

    def _compute(self, batch: int, args, kwargs) -> torch.Tensor:
        projected = self._projected.pop(batch, None)
        if projected is not None and self._checked:
            return self._projection(projected)
        out = self._original(*args, **kwargs)
        self._length = len(out) if isinstance(out, (tuple, list)) else 0
        first = out[0] if self._length else out
        if projected is not None:  # the first batch: is the module's output its projection's?
            self._checked = torch.equal(self._projection(projected), first)
            if not self._checked:
                self._projected.clear()
        return first

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        if self._module.__dict__.get("forward") == self._forward:
            del self._module.forward
        self._outputs.clear()
        self._projected.clear()


def replay_plan(groups: list[list[str]], modules: list[str]) -> dict[int, list[tuple[str, str | None]]]:
    """``{i: [(module, projection or None), ...]}``: what to start before solving group ``i`` (``i ==
    len(groups)``: after the last, before the block outputs). ``(module, projection)``: record the
    projection's inputs from the forward of its group on; ``(module, None)``: the module is final."""
    plan: dict[int, list[tuple[str, str | None]]] = {}
    for module in modules:
        inside = [i for i, names in enumerate(groups) if any(n.startswith(module + ".") for n in names)]
        final_after = inside[-1] + 1 if inside else 0
        last = groups[final_after - 1] if final_after else []
        if len(last) == 1:  # a lone output projection (o_proj, down_proj)
            plan.setdefault(final_after - 1, []).append((module, last[0]))
            plan.setdefault(final_after, []).append((module, None))
        elif final_after < len(groups):  # replaying pays only with two forwards or more to come
            plan.setdefault(final_after, []).append((module, None))
    return plan


def replayed_modules(arch) -> list[str]:
    """The block's attention and MLP modules (block-relative names) where the architecture table knows them."""
    mlp = arch.mlp_output.rpartition(".")[0] if arch.mlp_output else ""
    return [m for m in (arch.attention, mlp) if m]

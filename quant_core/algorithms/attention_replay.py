"""Replay a finished attention module's outputs in a block's later calibration forwards.

In true-sequential order (GPTQ, QuantEase) a block runs once per linear group, each time up to
the group's input, and once more for its outputs. Once every linear inside the attention module
is installed, the attention's outputs no longer change: its input comes from the block's inputs
alone (through the input norm, which these algorithms leave as it is) and its weights are final.
The forwards after that (the MLP groups' statistics and the block's outputs) then take the
outputs the first of them computed, per calibration batch, instead of recomputing the q/k/v
projections, the rotary embeddings and the attention itself: about half of a block's forward on
SmolLM2 (measured: 70 of 133 ms per batch of 8 windows of 512 tokens, bf16).

A batch is known by its hidden-state tensor (the block is always called with the same objects
from ``BlockInputs.hidden``); a call of the attention outside such a forward runs it as usual.
Only the first output is kept (the attention output); attention probabilities, which some
implementations return beside it and which calibration never reads, are replayed as None.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class AttentionReplay:
    """Records, then replays, ``attention``'s outputs per calibration batch of ``block`` (a batch is
    one tensor of ``hidden``); ``close`` gives the modules back as they were.

    With ``projection`` (the attention's output linear, not installed yet) it starts one step
    earlier: the forward that collects the projection's statistics records its inputs, which are
    final already, and the next forward computes the attention's output as ``projection(input)``
    instead of the whole attention. That shortcut is checked against the real attention on the
    first batch and dropped (with the real attention computed) where they differ, e.g. an
    attention that changes its projection's output before returning it."""

    def __init__(self, block: nn.Module, attention: nn.Module, hidden: list[torch.Tensor],
                 projection: nn.Module | None = None):
        self._batch_of = {id(h): i for i, h in enumerate(hidden)}
        self._hidden = hidden  # keeps the tensors, and so their ids, alive
        self._current: int | None = None  # the batch of the block call under way
        self._current_attention: int | None = None  # the batch of the attention call under way
        self._outputs: dict[int, torch.Tensor] = {}  # batch -> the attention's (first) output
        self._length = 0  # the attention returns a tuple of this length (0: a tensor)
        self._attention, self._projection = attention, projection
        self._projected: dict[int, torch.Tensor] = {}  # batch -> the projection's input
        self._recording = projection is not None  # projection's inputs, until projection_final
        self._checked = False
        self._handles = [block.register_forward_pre_hook(self._enter_block)]
        if projection is not None:
            self._handles.append(projection.register_forward_pre_hook(self._projection_input))
        self._original = attention.forward
        attention.forward = self._forward

    def projection_final(self) -> None:
        """The projection is installed: from the next forward on, replay."""
        self._recording = False

    def _enter_block(self, _module, args) -> None:
        self._current = self._batch_of.get(id(args[0])) if args else None

    def _projection_input(self, _module, args) -> None:
        if self._recording and self._current_attention is not None:
            self._projected[self._current_attention] = args[0].detach()

    def _forward(self, *args, **kwargs) -> Any:
        batch, self._current = self._current, None  # one attention call per block call
        self._current_attention = batch
        try:
            if batch is None or self._recording:
                return self._original(*args, **kwargs)
            if batch not in self._outputs:
                self._outputs[batch] = self._compute(batch, args, kwargs)
        finally:
            self._current_attention = None
        first = self._outputs[batch].clone()  # the caller may change its copy in place
        return (first,) + (None,) * (self._length - 1) if self._length else first

    def _compute(self, batch: int, args, kwargs) -> torch.Tensor:
        projected = self._projected.pop(batch, None)
        if projected is not None and self._checked:
            return self._projection(projected)
        out = self._original(*args, **kwargs)
        self._length = len(out) if isinstance(out, (tuple, list)) else 0
        first = out[0] if self._length else out
        if projected is not None:  # the first batch: is the attention's output its projection's?
            self._checked = torch.equal(self._projection(projected), first)
            if not self._checked:
                self._projected.clear()
        return first

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        if self._attention.__dict__.get("forward") == self._forward:
            del self._attention.forward
        self._outputs.clear()
        self._projected.clear()


def attention_final_after(groups: list[list[str]], attention: str | None) -> int | None:
    """How many of ``groups`` (in order) must be installed before the attention module named
    ``attention`` is final: one past the last group holding a linear inside it; None when the
    block has no attention module known to the architecture table."""
    if not attention:
        return None
    inside = [i for i, names in enumerate(groups) if any(n.startswith(attention + ".") for n in names)]
    return inside[-1] + 1 if inside else 0


def output_projection(groups: list[list[str]], attention: str | None, final_after: int | None) -> str | None:
    """The linear whose inputs are final one group before the attention is: the last group inside
    the attention when it is a single linear (o_proj), else None."""
    if not final_after:
        return None
    last = groups[final_after - 1]
    return last[0] if len(last) == 1 and final_after > 1 else None

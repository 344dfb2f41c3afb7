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

import contextlib
from typing import Any

import torch
from torch import nn


class AttentionReplay:
    """Records, then replays, ``attention``'s outputs per calibration batch of ``block`` (a batch is
    one tensor of ``hidden``); ``close`` gives both modules back as they were."""

    def __init__(self, block: nn.Module, attention: nn.Module, hidden: list[torch.Tensor]):
        self._batch_of = {id(h): i for i, h in enumerate(hidden)}
        self._hidden = hidden  # keeps the tensors, and so their ids, alive
        self._current: int | None = None
        self._outputs: dict[int, tuple[torch.Tensor, int]] = {}  # batch -> (output, tuple length or 0)
        self._attention = attention
        self._original = attention.forward
        attention.forward = self._forward
        self._hook = block.register_forward_pre_hook(self._enter_block)

    def _enter_block(self, _module, args) -> None:
        self._current = self._batch_of.get(id(args[0])) if args else None

    def _forward(self, *args, **kwargs) -> Any:
        batch, self._current = self._current, None  # one attention call per block call
        if batch is None:
            return self._original(*args, **kwargs)
        if batch not in self._outputs:
            out = self._original(*args, **kwargs)
            is_tuple = isinstance(out, (tuple, list))
            self._outputs[batch] = (out[0], len(out)) if is_tuple else (out, 0)
        first, length = self._outputs[batch]
        first = first.clone()  # the caller may change its copy in place
        return (first,) + (None,) * (length - 1) if length else first

    def close(self) -> None:
        self._hook.remove()
        if self._attention.__dict__.get("forward") == self._forward:
            del self._attention.forward
        self._outputs.clear()


def attention_final_after(groups: list[list[str]], attention: str | None) -> int | None:
    """How many of ``groups`` (in order) must be installed before the attention module named
    ``attention`` is final: one past the last group holding a linear inside it; None when the
    block has no attention module known to the architecture table."""
    if not attention:
        return None
    inside = [i for i, names in enumerate(groups) if any(n.startswith(attention + ".") for n in names)]
    return inside[-1] + 1 if inside else 0

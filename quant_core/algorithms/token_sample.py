"""A spread sample of the tokens of every calibration window, for AWQ parents that act on each token alone.

An MLP computes each token's output from that token alone, so its scale search can compare any set of
tokens: every n-th token of all calibration windows sees the whole text, where a few whole windows see
only their stretch of it (the windows come in text order). Attention needs every key of a window and
keeps whole windows. Whether a parent is per-token is read from how it is called and checked by a probe:
called with the hidden states alone, and giving each token the same output when the window's tokens come
in reverse order (a causal attention fails it by a wide margin).
"""
from __future__ import annotations

import torch
from torch import nn

PROBE_TOKENS = 32
MAX_PARTS = 8  # interleaved parts of the sample: pruned_argmin can stop a losing ratio after a few
MIN_PART_TOKENS = 256


def hidden_only(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The ``[batch, seq, hidden]`` input of a call that passes nothing else, else None."""
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    if len(args) == 1 and len(tensors) == 1 and args[0].dim() == 3:
        return args[0]
    return None


@torch.no_grad()
def acts_per_token(parent: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``parent`` gives each token of a window the output it gives it with the tokens reversed."""
    probe = x[:1, :PROBE_TOKENS]
    out, reversed_out = (o[0] if isinstance(o, (tuple, list)) else o
                         for o in (parent(probe), parent(probe.flip(1))))
    scale = out.abs().amax().clamp_min(1e-12)
    return out.shape == reversed_out.shape and bool(((out - reversed_out.flip(1)).abs() <= 1e-3 * scale).all())


def strided_tokens(x: torch.Tensor, stride: int, skip: int, first_window: int) -> torch.Tensor:
    """Every ``stride``-th token of each window of ``x`` after its first ``skip``, ``[tokens, hidden]``;
    window ``first_window + i`` starts at offset ``(first_window + i) % stride`` past the skipped ones, so
    consecutive windows cover every position."""
    return torch.cat([x[i, skip + (first_window + i) % stride::stride] for i in range(x.shape[0])])


def interleaved_parts(tokens: torch.Tensor) -> list[torch.Tensor]:
    """The sample as a few ``[1, tokens, hidden]`` parts, each spread over all windows (part j: tokens
    j, j + parts, ...), so every part's error ranks the ratios as the whole would."""
    parts = max(1, min(MAX_PARTS, tokens.shape[0] // MIN_PART_TOKENS))
    return [tokens[j::parts].unsqueeze(0) for j in range(parts)]

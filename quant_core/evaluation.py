"""Perplexity, by the convention in shared/data/README.md: join lines with blank lines,
tokenize once, cut into non-overlapping windows of ``seqlen`` tokens, average the
token-level negative log-likelihood over the windows, report exp of it."""
from __future__ import annotations

import math
from pathlib import Path

import torch


def read_eval_text(path) -> str:
    return "\n\n".join(Path(path).read_text(encoding="utf-8").splitlines())


def windows(tokenizer, text: str, seqlen: int = 512, max_windows: int | None = 32) -> torch.Tensor:
    """Token windows ``[n, seqlen]``; ``max_windows=None`` (or 0) takes every full window."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    n = ids.numel() // seqlen
    if max_windows:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than one window of {seqlen}; "
                         f"use a longer text or a smaller seqlen")
    return ids[: n * seqlen].reshape(n, seqlen)


@torch.no_grad()
def perplexity(model, tokenizer, text: str, seqlen: int = 512, max_windows: int | None = 32,
               progress: bool = True) -> float:
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    batches = windows(tokenizer, text, seqlen, max_windows)
    nll = 0.0
    for window in tqdm(batches, desc="perplexity", unit="window", disable=not progress):
        ids = window.unsqueeze(0).to(device)
        logits = model(ids, use_cache=False).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    return math.exp(nll / len(batches))

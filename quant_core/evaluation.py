"""Perplexity, by the convention in shared/data/README.md: join lines with blank lines,
tokenize once, cut into non-overlapping windows of ``seqlen`` tokens, average the
token-level negative log-likelihood over the windows, report exp of it."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .errors import EvaluationError
from .text_files import read_text_file

# Config names under which models state how many positions they take (as the engine reads them).
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def read_eval_text(path) -> str:
    """The file's lines joined with blank lines; a missing, empty or binary file raises EvaluationError."""
    return "\n\n".join(read_text_file(path, "evaluation text", EvaluationError).splitlines())


def check_window_args(seqlen: int, max_windows: int | None, names=("seqlen", "max_windows")) -> None:
    """Refuse window settings that cannot give a perplexity (before any model or text is loaded);
    ``names``: what the caller calls the two settings (the CLI: --seqlen, --windows)."""
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise EvaluationError(f"{names[0]} must be an integer of at least 2 (each token is predicted from the "
                              f"ones before it in its window, so 1 predicts nothing); got {seqlen!r}")
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int)
                                    or max_windows < 0):
        raise EvaluationError(f"{names[1]} must be a whole number >= 0 (0: every full window); got {max_windows!r}")


def windows(tokenizer, text: str, seqlen: int = 512, max_windows: int | None = 32) -> torch.Tensor:
    """Token windows ``[n, seqlen]``; ``max_windows=None`` (or 0) takes every full window."""
    check_window_args(seqlen, max_windows)
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    n = ids.numel() // seqlen
    if max_windows:
        n = min(n, max_windows)
    if n == 0:
        raise EvaluationError(f"text has {ids.numel()} tokens, fewer than one window of {seqlen}; "
                              f"use a longer text or a smaller seqlen")
    return ids[: n * seqlen].reshape(n, seqlen)


def check_fits_model(model, seqlen: int) -> None:
    """Refuse windows longer than the model's positions: it would score tokens it was never trained on."""
    config = getattr(model, "config", None)
    positions = next((value for value in (getattr(config, name, None) for name in POSITION_FIELDS)
                      if isinstance(value, int) and value > 0), None)
    if positions is not None and seqlen > positions:
        raise EvaluationError(f"windows of {seqlen} tokens are longer than the model's {positions} positions; "
                              f"use a seqlen of at most {positions}")


@torch.no_grad()
def perplexity(model, tokenizer, text: str, seqlen: int = 512, max_windows: int | None = 32,
               progress: bool = True) -> float:
    return windows_perplexity(model, windows(tokenizer, text, seqlen, max_windows), progress)


@torch.no_grad()
def windows_perplexity(model, batches: torch.Tensor, progress: bool = True) -> float:
    """Perplexity over token windows ``[n, seqlen]`` (from ``windows``); a non-finite loss raises."""
    check_fits_model(model, batches.shape[1])
    device = next(model.parameters()).device
    nll = 0.0
    for index, window in enumerate(tqdm(batches, desc="perplexity", unit="window", disable=not progress)):
        ids = window.unsqueeze(0).to(device)
        logits = model(ids, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
        if not math.isfinite(loss):  # printed as "perplexity: nan" with exit code 0 before
            raise EvaluationError(f"the model's loss on window {index} is {loss}: its outputs are not finite "
                                  f"(an overflow in half precision, or a damaged checkpoint); try float32")
        nll += loss
    return math.exp(nll / len(batches))

"""Pieces of the generation engine: one row's text, one step's next tokens, facts about a model."""
from __future__ import annotations

import torch
from transformers import TopKLogitsWarper, TopPLogitsWarper

from .engine_types import GenerationOutput, GenerationParams


class Row:
    """One prompt's completion while it is being decoded: tokens, text, stop strings, finish reason."""

    def __init__(self, tokenizer, stop: list[str], prompt_tokens: int, budget: int):
        self.tokenizer, self.stop = tokenizer, list(stop)
        self.prompt_tokens, self.budget = prompt_tokens, budget
        self.ids: list[int] = []
        self.text = ""
        self.completion_tokens = 0  # every token the model produced for this row, EOS included
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add(self, token: int, is_eos: bool) -> None:
        self.completion_tokens += 1
        if is_eos:
            self.finish_reason = "eos"
            return
        self.ids.append(token)
        # Decoding the whole completion (not token by token) keeps multi-token characters
        # and word-boundary spaces right; completions are short enough for this to be cheap.
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = first_stop(text, self.stop)
        if cut is not None:
            self.text, self.finish_reason = text[:cut], "stop"
            return
        self.text = text
        if self.completion_tokens >= self.budget:
            self.finish_reason = "length"

    def streamable_text(self) -> str:
        """The text that can be shown now: never a half-decoded character or a possible stop prefix."""
        if self.finished:
            return self.text
        text = self.text.rstrip("\ufffd")
        hold = max((held_back(text, s) for s in self.stop), default=0)
        return text[:len(text) - hold]

    def output(self) -> GenerationOutput:
        return GenerationOutput(self.text, self.prompt_tokens, self.completion_tokens,
                                self.finish_reason or "length")


def first_stop(text: str, stops: list[str]) -> int | None:
    """Index where the earliest stop string begins, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def held_back(text: str, stop: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``stop``."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


def apply_repetition_penalty(logits: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """CTRL's penalty (as in transformers) over each row's real tokens only, never its padding."""
    # Padding positions point at the row's last token, which is real and penalised once anyway.
    ids = torch.where(history_mask.bool(), history, history[:, -1:])
    picked = logits.gather(1, ids)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits.scatter(1, ids, picked)


def choose_next_tokens(logits: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor,
                       params: GenerationParams, generator: torch.Generator | None) -> torch.Tensor:
    """float32 logits ``[B, V]`` -> next token ids ``[B]`` (greedy when temperature is 0)."""
    if params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, history, history_mask, params.repetition_penalty)
    if params.temperature == 0:
        return logits.argmax(-1)
    logits = logits / params.temperature
    if params.top_k > 0:
        logits = TopKLogitsWarper(params.top_k)(history, logits)
    if params.top_p < 1.0:
        logits = TopPLogitsWarper(params.top_p)(history, logits)
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# ---- facts about a model and tokenizer ----

def device_of(model) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def first_not_none(*values):
    return next(v for v in values if v is not None)


def eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    return ids


def decoder_start_id(model) -> int:
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "decoder_start_token_id", None)
        if value is not None:
            return value
    return model.config.pad_token_id


def logits_width(model, tokenizer) -> int:
    """How many logits a step yields (the output embedding's rows; padded vocabularies exceed the tokenizer's)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    return int(getattr(model.config, "vocab_size", None) or len(tokenizer))

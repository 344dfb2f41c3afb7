"""How the engine runs one forward pass per decoding step, per kind of model and KV cache.

Each stepper takes a left-padded batch (``input_ids``, ``mask``) and offers ``first()``
(the prompt's pass) and ``next(tokens)`` (one new token per row), both returning float32
logits ``[B, vocab]`` of the last position, plus ``history``: the tokens the repetition
penalty looks at before anything is generated.
"""
from __future__ import annotations

import torch

from .decode import make_decoder
from .engine_rows import decoder_start_id


class DynamicStepper:
    """Decoder-only model with transformers' own growing cache."""

    def __init__(self, model, input_ids, mask, cache_arg: str, extra: dict, pass_positions: bool):
        self.model, self.cache_arg, self.extra, self.pass_positions = model, cache_arg, extra, pass_positions
        self.mask, self.cache = mask, None
        self.history = input_ids
        self._first = dict(input_ids=input_ids, attention_mask=mask)
        if pass_positions:
            self._first["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)

    def _run(self, inputs) -> torch.Tensor:
        out = self.model(**inputs, **{self.cache_arg: self.cache}, use_cache=True, **self.extra)
        cache = getattr(out, "cache", None)
        self.cache = getattr(out, "past_key_values", None) if cache is None else cache
        return out.logits[:, -1, :].float()

    def first(self) -> torch.Tensor:
        return self._run(self._first)

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        # finished rows keep a 1 in the mask so their attention never sees an all-masked row
        self.mask = torch.cat([self.mask, torch.ones_like(tokens)], 1)
        inputs = dict(input_ids=tokens, attention_mask=self.mask)
        if self.pass_positions:
            inputs["position_ids"] = self.mask.sum(-1, keepdim=True) - 1
        return self._run(inputs)


class StaticStepper:
    """Decoder-only model over quant_core.decode's preallocated KV cache (no per-step cache growth):
    the lean step where it fits (``lean``: None), or insisted on (True) or refused (False)."""

    def __init__(self, model, input_ids, mask, max_len: int, lean: bool | None = None):
        self.decoder = make_decoder(model, batch_size=input_ids.shape[0], max_len=max_len, lean=lean)
        self.input_ids, self.mask = input_ids, mask
        self.history = input_ids

    def first(self) -> torch.Tensor:
        return self.decoder.prefill(self.input_ids, self.mask).float()

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder.step(tokens[:, 0]).float()


class Seq2SeqStepper:
    """Encoder-decoder model: the encoder runs once in ``first()``, then the decoder per step."""

    def __init__(self, model, input_ids, mask, cache_arg: str):
        self.model, self.cache_arg = model, cache_arg
        self.input_ids, self.mask, self.cache, self.encoder_outputs = input_ids, mask, None, None
        start = decoder_start_id(model)
        self.history = torch.full((input_ids.shape[0], 1), start, device=input_ids.device)

    def _run(self, decoder_input_ids) -> torch.Tensor:
        out = self.model(encoder_outputs=self.encoder_outputs, attention_mask=self.mask,
                         decoder_input_ids=decoder_input_ids, **{self.cache_arg: self.cache}, use_cache=True)
        cache = getattr(out, "cache", None)
        self.cache = getattr(out, "past_key_values", None) if cache is None else cache
        return out.logits[:, -1, :].float()

    def first(self) -> torch.Tensor:
        self.encoder_outputs = self.model.get_encoder()(input_ids=self.input_ids, attention_mask=self.mask)
        return self._run(self.history)

    def next(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._run(tokens)

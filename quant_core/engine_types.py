"""The generation engine's types: what a call asks for (GenerationParams) and what it gets back
(GenerationOutput).

They sit below the engine and its helpers (``engine_rows``, ``engine_steppers``) so that every
one of them can name these types without importing the engine itself.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError, SettingTypeError, UnknownSettingError

# Other names callers use for a setting: transformers pipelines, OpenAI-style and LlamaIndex APIs.
ALIASES = {"max_tokens": "max_new_tokens", "stop_sequence": "stop", "stop_sequences": "stop",
           "stopping_ids": "stop_token_ids"}
# Accepted for compatibility with transformers, with no effect on any output: padding positions
# are masked out of attention, so which id fills them changes nothing.
IGNORED = frozenset({"pad_token_id"})
DO_SAMPLE = "do_sample"  # transformers' switch: False forces greedy, True samples (at 1.0 unless told)
EOS_TOKEN_ID = "eos_token_id"  # transformers' name: more ids that end a completion (int or list)
# Settings about the shape of a call's result, not about decoding. A wrapper that honours them
# (LangChain's QuantLLM) takes them out first; anywhere else a value other than the one that asks
# for what the engine does (one completion, without the prompt) is refused, never dropped.
OUTPUT_SETTINGS = {"num_return_sequences": 1, "return_full_text": False}
MAX_SEED = 2 ** 63 - 1  # torch's generators overflow above it


@dataclass
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None  # sampling only; None = torch's global generator
    stop_token_ids: list[int] = field(default_factory=list)  # ids that end a completion, beside the model's EOS

    def validate(self) -> GenerationParams:
        """Raise a clear error for a bad setting (called before any model work): numbers of the wrong type
        (a bool or a string) raise ``SettingTypeError``, out-of-range or non-finite ones ``ConfigError``.
        Numbers of other types (numpy's) become Python's own."""
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise SettingTypeError(f"stop must be a list of non-empty strings, e.g. stop=['\\n\\n']; "
                                   f"got {self.stop!r}")
        self.max_new_tokens = _integer("max_new_tokens", self.max_new_tokens)
        self.temperature = _finite("temperature", self.temperature)
        self.top_p = _finite("top_p", self.top_p)
        self.top_k = _integer("top_k", self.top_k)
        self.repetition_penalty = _finite("repetition_penalty", self.repetition_penalty)
        self.seed = None if self.seed is None else _integer("seed", self.seed)
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer; got {self.max_new_tokens!r}")
        if not isinstance(self.stop_token_ids, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.stop_token_ids):
            raise SettingTypeError(f"stop_token_ids (stopping_ids, eos_token_id) must be a list of token ids; "
                                   f"got {self.stop_token_ids!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 means greedy); got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 disables it); got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1.0 disables it); got {self.repetition_penalty}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be in [0, 2**63 - 1], what random generators take; got {self.seed}")
        return self

    @classmethod
    def from_kwargs(cls, *layers: Mapping[str, Any] | None, stop: list[str] | None = None) -> GenerationParams:
        """Merge layers of settings (defaults first, a call's own last) and ``stop`` into validated params.

        Keys may be spelled as transformers pipelines, LangChain or LlamaIndex spell them (``ALIASES``);
        None means "not set"; ``do_sample=False`` forces greedy decoding and ``do_sample=True`` without
        a temperature samples at 1.0; ``eos_token_id`` adds ids that end a completion; ``pad_token_id``
        has no effect (padding is masked). ``OUTPUT_SETTINGS`` other than their trivial values raise
        (the caller did not take them out, so nothing would honour them). An unknown key raises,
        listing the known ones, so a typo never silently changes nothing.
        """
        merged: dict[str, Any] = {}
        for layer in layers:
            cls.check_keywords(layer)
            for key, value in (layer or {}).items():
                merged[ALIASES.get(key, key)] = value
        if stop is not None:
            merged["stop"] = stop
        refuse_output_settings(merged)
        do_sample = merged.pop(DO_SAMPLE, None)
        extra_eos = merged.pop(EOS_TOKEN_ID, None)
        settings = {k: v for k, v in merged.items()
                    if v is not None and k not in IGNORED and k not in OUTPUT_SETTINGS}
        if isinstance(settings.get("stop"), (str, tuple)):
            stops = settings["stop"]
            settings["stop"] = [stops] if isinstance(stops, str) else list(stops)
        if isinstance(settings.get("stop_token_ids"), (int, tuple)):
            settings["stop_token_ids"] = _as_id_list(settings["stop_token_ids"])
        if extra_eos is not None:
            settings["stop_token_ids"] = [*settings.get("stop_token_ids", []), *_as_id_list(extra_eos)]
        if do_sample is False:
            settings["temperature"] = 0.0
        elif do_sample and not settings.get("temperature"):
            settings["temperature"] = 1.0
        return cls(**settings).validate()

    @classmethod
    def check_keywords(cls, settings: Mapping[str, Any] | None, what: str = "generation setting(s)") -> None:
        """Raise ``UnknownSettingError`` naming every key of ``settings`` that ``from_kwargs`` does not know."""
        names = [f.name for f in fields(cls)]
        known = set(names) | set(ALIASES) | IGNORED | {DO_SAMPLE, EOS_TOKEN_ID} | set(OUTPUT_SETTINGS)
        unknown = sorted(set(settings or {}) - known)
        if unknown:
            raise UnknownSettingError(
                f"unknown {what} {unknown}; valid: {', '.join(names + list(ALIASES) + [DO_SAMPLE, EOS_TOKEN_ID])} "
                f"(accepted without effect: {', '.join(sorted(IGNORED))}: padding is masked)")

    @property
    def batchable_with_others(self) -> bool:
        # A seeded sampling run must not depend on who else is in the batch.
        return self.temperature == 0 or self.seed is None


def refuse_output_settings(settings: Mapping[str, Any]) -> None:
    """Raise for an ``OUTPUT_SETTINGS`` key set to anything but what the engine does anyway."""
    for key, trivial in OUTPUT_SETTINGS.items():
        value = settings.get(key)
        if value is not None and value != trivial:
            raise ConfigError(
                f"{key}={value!r} is not honoured here: this call returns one completion per prompt, without "
                f"the prompt. LangChain's QuantLLM honours it (several generations per prompt with sampling, or "
                f"the prompt before the completion); elsewhere leave it out or set {key}={trivial!r}")


def _as_id_list(ids) -> list[int]:
    return [ids] if isinstance(ids, int) else list(ids)


def _integer(name: str, value) -> int:
    # bool is an int in Python, but max_new_tokens=True meaning 1 is never what was meant
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingTypeError(f"{name} must be an integer, not {type(value).__name__} ({value!r})")
    return int(value)


def _finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingTypeError(f"{name} must be a number, not {type(value).__name__} ({value!r})")
    if not math.isfinite(value):  # nan passes every comparison test: repetition_penalty=nan gave "HiHiHi"
        raise ConfigError(f"{name} must be a finite number; got {value}")
    return float(value)


@dataclass
class GenerationOutput:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "eos"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def usage(self) -> dict[str, int]:
        """Token counts under the names OpenAI-style APIs, LangChain's ``token_usage`` and LlamaIndex's
        ``TokenCountingHandler`` read."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}

    @staticmethod
    def total_usage(outputs: Iterable[GenerationOutput]) -> dict[str, int]:
        """``usage()`` summed over several outputs (one batch call's)."""
        total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for output in outputs:
            for key, count in output.usage().items():
                total[key] += count
        return total

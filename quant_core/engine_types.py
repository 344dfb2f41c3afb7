"""The generation engine's types: what a call asks for (GenerationParams) and what it gets back
(GenerationOutput).

They sit below the engine and its helpers (``engine_rows``, ``engine_steppers``) so that every
one of them can name these types without importing the engine itself.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError, UnknownSettingError

# Other names callers use for a setting: transformers pipelines, OpenAI-style and LlamaIndex APIs.
ALIASES = {"max_tokens": "max_new_tokens", "stop_sequence": "stop", "stop_sequences": "stop"}
# Accepted for compatibility with transformers pipelines, with no effect here (and why).
IGNORED = frozenset({
    "return_full_text",  # completions never repeat the prompt, as in LangChain's HuggingFacePipeline
    "num_return_sequences", "pad_token_id", "eos_token_id",  # the engine knows the model's own
})
DO_SAMPLE = "do_sample"  # transformers' switch: False forces greedy, True samples (at 1.0 unless told)


@dataclass
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None  # sampling only; None = torch's global generator

    def validate(self) -> GenerationParams:
        """Raise a clear error for a bad setting (called before any model work)."""
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise TypeError(f"stop must be a list of non-empty strings, e.g. stop=['\\n\\n']; got {self.stop!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer; got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 means greedy); got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 disables it); got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1.0 disables it); got {self.repetition_penalty}")
        return self

    @classmethod
    def from_kwargs(cls, *layers: Mapping[str, Any] | None, stop: list[str] | None = None) -> GenerationParams:
        """Merge layers of settings (defaults first, a call's own last) and ``stop`` into validated params.

        Keys may be spelled as transformers pipelines, LangChain or LlamaIndex spell them (``ALIASES``);
        None means "not set"; ``do_sample=False`` forces greedy decoding and ``do_sample=True`` without
        a temperature samples at 1.0; pipeline-only keys (``IGNORED``) have no effect. An unknown key
        raises, listing the known ones, so a typo never silently changes nothing.
        """
        merged: dict[str, Any] = {}
        for layer in layers:
            cls.check_keywords(layer)
            for key, value in (layer or {}).items():
                merged[ALIASES.get(key, key)] = value
        if stop is not None:
            merged["stop"] = stop
        do_sample = merged.pop(DO_SAMPLE, None)
        settings = {k: v for k, v in merged.items() if v is not None and k not in IGNORED}
        if isinstance(settings.get("stop"), (str, tuple)):
            stops = settings["stop"]
            settings["stop"] = [stops] if isinstance(stops, str) else list(stops)
        if do_sample is False:
            settings["temperature"] = 0.0
        elif do_sample and not settings.get("temperature"):
            settings["temperature"] = 1.0
        return cls(**settings).validate()

    @classmethod
    def check_keywords(cls, settings: Mapping[str, Any] | None, what: str = "generation setting(s)") -> None:
        """Raise ``UnknownSettingError`` naming every key of ``settings`` that ``from_kwargs`` does not know."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(settings or {}) - set(names) - set(ALIASES) - IGNORED - {DO_SAMPLE})
        if unknown:
            raise UnknownSettingError(
                f"unknown {what} {unknown}; valid: {', '.join(names + list(ALIASES) + [DO_SAMPLE])} "
                f"(accepted without effect: {', '.join(sorted(IGNORED))})")

    @property
    def batchable_with_others(self) -> bool:
        # A seeded sampling run must not depend on who else is in the batch.
        return self.temperature == 0 or self.seed is None


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

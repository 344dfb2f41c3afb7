"""The generation engine's types: what a call asks for (GenerationParams) and what it gets back
(GenerationOutput).

They sit below the engine and its helpers (``engine_rows``, ``engine_steppers``) so that every
one of them can name these types without importing the engine itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None  # sampling only; None = torch's global generator

    def validate(self) -> "GenerationParams":
        """Raise a clear error for a bad setting (called before any model work)."""
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise TypeError(f"stop must be a list of non-empty strings, e.g. stop=['\\n\\n']; got {self.stop!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer; got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy); got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it); got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 disables it); got {self.repetition_penalty}")
        return self

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

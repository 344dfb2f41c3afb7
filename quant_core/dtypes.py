"""Float dtypes by the names users and configs write for them, in one table.

"fp16", "float16" and "torch.float16" all mean ``torch.float16``; ``None`` and "auto" mean the
default (float32: the dtype every kernel and model path accepts).
"""
from __future__ import annotations

import torch

from .errors import ConfigError

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch's own names for the same dtypes
ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def as_torch_dtype(dtype: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """A dtype name (or a torch.dtype, returned as it is) -> torch.dtype; None and "auto" -> ``default``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return default
    key = str(dtype).lower().removeprefix("torch.")
    if key == "auto":
        return default
    key = ALIASES.get(key, key)
    if key not in TORCH_DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join([*TORCH_DTYPES, *ALIASES, 'auto'])}")
    return TORCH_DTYPES[key]

"""Where quantllm keeps what it builds, measures or converts once (compiled kernels, Triton
tunings, dequantized GGUF models): ``$QUANTLLM_CACHE``, or ``~/.cache/quantllm``."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("QUANTLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "quantllm"))

"""How ``load_model`` recognises the checkpoints this package imports: each kind registers
with ``quant_core.sources`` when ``quant_core.interop`` is imported (``import quant_core``
does it), between quantllm directories (priority 10) and plain ``.gguf`` files (50)."""
from __future__ import annotations

from pathlib import Path

from ..sources import register_source
from .awq import is_awq_dir, load_awq
from .gguf import is_packed_gguf_source, load_gguf_packed
from .gptq import is_gptq_dir, load_gptq


def _only_causal_lm(task: str, what: str) -> None:
    if task != "text-generation":
        raise ValueError(f"{what} checkpoints are read as text-generation models; got task {task!r}")


def _gptq(source, task, dtype, device, **_):
    _only_causal_lm(task, "GPTQ")
    return load_gptq(Path(source), dtype=dtype, device=device)


def _awq(source, task, dtype, device, **_):
    _only_causal_lm(task, "AWQ")
    return load_awq(Path(source), dtype=dtype, device=device)


def _gguf_packed(source, task, dtype, device, **_):
    _only_causal_lm(task, "GGUF")
    return load_gguf_packed(source, dtype=dtype, device=device)


register_source("gptq", is_gptq_dir, _gptq, priority=20)  # a directory whose quantization_config says gptq
register_source("awq", is_awq_dir, _awq, priority=30)  # ... says awq (GEMM)
register_source("gguf-packed", is_packed_gguf_source, _gguf_packed, priority=40)  # "file.gguf#packed"

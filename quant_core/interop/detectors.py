"""Entries for ``quant_core.loading.DETECTORS``: how ``load_model`` recognises the checkpoints
this package imports. Each is (name, matches(source), loader(source, task, dtype, device, **kw))."""
from __future__ import annotations

from pathlib import Path


def _only_causal_lm(task: str, what: str) -> None:
    if task != "text-generation":
        raise ValueError(f"{what} checkpoints are read as text-generation models; got task {task!r}")


def _gptq(source, task, dtype, device, **_):
    from .gptq import load_gptq
    _only_causal_lm(task, "GPTQ")
    return load_gptq(Path(source), dtype=dtype, device=device)


def _awq(source, task, dtype, device, **_):
    from .awq import load_awq
    _only_causal_lm(task, "AWQ")
    return load_awq(Path(source), dtype=dtype, device=device)


def _gguf_packed(source, task, dtype, device, **_):
    from .gguf import load_gguf_packed
    _only_causal_lm(task, "GGUF")
    return load_gguf_packed(source, dtype=dtype, device=device)


def _is_gptq(source) -> bool:
    from .gptq import is_gptq_dir
    return is_gptq_dir(source)


def _is_awq(source) -> bool:
    from .awq import is_awq_dir
    return is_awq_dir(source)


def _is_packed_gguf(source) -> bool:
    from .gguf import is_packed_gguf_source
    return is_packed_gguf_source(source)


DETECTORS = [
    ("gptq", _is_gptq, _gptq),  # a directory whose quantization_config says quant_method gptq
    ("awq", _is_awq, _awq),  # ... quant_method awq (GEMM)
    ("gguf-packed", _is_packed_gguf, _gguf_packed),  # "file.gguf#packed": keep Q4_0/Q4_1/Q8_0 packed
]

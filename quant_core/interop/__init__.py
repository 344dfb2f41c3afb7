"""Interoperability with the quantized checkpoints users already have and the engines that
serve them: GPTQ and AWQ (GEMM) directories, GGUF files (llama.cpp).

Import maps each format's tensors onto our packed layout bit for bit (no float detour
where the format is representable); export refuses, before writing anything, what the
target cannot hold, naming the settings it can.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ExportError
from . import detectors  # noqa: F401  (registers the GPTQ, AWQ and packed-GGUF sources with load_model)
from .awq import export_awq, is_awq_dir, load_awq
from .gguf import PACKED_SUFFIX, import_gguf_layers, is_packed_gguf_source, load_gguf_packed
from .gguf_export import export_gguf
from .gptq import export_gptq, is_gptq_dir, load_gptq

TARGETS = ("gptq", "awq", "gguf")


def export(model, tokenizer, out, to: str, **options) -> Path:
    """Write a quantllm model for another engine: ``to`` is gptq | awq | gguf."""
    writers = {"gptq": export_gptq, "awq": export_awq, "gguf": export_gguf}
    if to not in writers:
        raise ValueError(f"unknown export target {to!r}; choose one of {', '.join(TARGETS)}")
    return writers[to](model, tokenizer, out, **options)


__all__ = ["export", "export_gptq", "export_awq", "export_gguf", "load_gptq", "load_awq",
           "load_gguf_packed", "import_gguf_layers", "is_gptq_dir", "is_awq_dir",
           "is_packed_gguf_source", "ExportError", "PACKED_SUFFIX", "TARGETS"]

"""LlamaIndex provider for quantllm (QuantLlamaLLM).

Needs the ``llamaindex`` extra: ``pip install 'quantllm[llamaindex]'``.
"""
try:
    from .base import QuantLlamaLLM
except ImportError as exc:  # say which extra to install instead of a bare ModuleNotFoundError
    if "llama_index" not in str(exc):
        raise
    raise ImportError("llamaindex_quant needs llama-index-core: pip install 'quantllm[llamaindex]'") from exc

__all__ = ["QuantLlamaLLM"]

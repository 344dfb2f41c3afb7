"""Decoding over a preallocated KV cache: the lean step (``LeanDecoder`` on CPU,
``cuda_lean.CudaLeanDecoder`` on CUDA, imported where used since it needs Triton; the decoder
families of ``lean_model.FAMILIES``) or transformers' own modules (``StaticDecoder``, any
causal LM, CUDA graphs on GPU). ``make_decoder`` picks; all offer ``prefill(ids, mask) ->
logits`` and ``step(tokens) -> logits``."""
from .generate import greedy_generate, lean_fits, make_decoder
from .lean import LeanDecoder
from .static import StaticDecoder

__all__ = ["LeanDecoder", "StaticDecoder", "greedy_generate", "lean_fits", "make_decoder"]

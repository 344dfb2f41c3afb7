"""Picking a decoder for a model, and the greedy loop benchmarks and tests run on it."""
from __future__ import annotations

import os
import time

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from .cuda_model import cuda_lean_reason
from .lean import LeanDecoder
from .lean_model import lean_reason
from .static import StaticDecoder

CUDA_LEAN_ENV = "QUANTLLM_CUDA_LEAN"
CUDA_LEAN_DEFAULT = True  # H200, synthetic 8B int4 g128 batch 1: 356 tok/s lean against 210 (commit message)


def lean_fits(model, max_len: int) -> str | None:
    """Why ``LeanDecoder`` cannot run ``model`` with a ``max_len`` cache (None: it can)."""
    why = lean_reason(model) or _hooked(model)
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    if why is None and window and max_len > window:
        why = f"a {max_len}-position cache exceeds the sliding window ({window})"
    return why


def _hooked(model: nn.Module) -> str | None:
    """The lean step never calls the model's modules: a forward hook, a replaced ``forward`` (accelerate's
    offloading, a user's wrapper) or a global hook would silently stop running, so such a model keeps them."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return "global module forward hooks are registered"
    for name, sub in model.named_modules():
        if sub._forward_hooks or sub._forward_pre_hooks or "forward" in vars(sub):
            return f"module {name or type(model).__name__!r} has a forward hook or a replaced forward"
    return None


def cuda_lean_fits(model, max_len: int) -> str | None:
    """Why ``CudaLeanDecoder`` cannot run ``model`` with a ``max_len`` cache (None: it can)."""
    return cuda_lean_reason(model, max_len) or _hooked(model)


def cuda_lean_wanted() -> bool:
    """Whether ``make_decoder`` picks the CUDA lean step where it fits ($QUANTLLM_CUDA_LEAN "1" on, "0" off)."""
    setting = os.environ.get(CUDA_LEAN_ENV, "").strip()
    return setting == "1" if setting in ("0", "1") else CUDA_LEAN_DEFAULT


def make_decoder(model, batch_size: int, max_len: int, compile_step: bool = False, lean: bool | None = None):
    """A lean step where it fits (decoder families of lean_model.FAMILIES: ``LeanDecoder`` on CPU,
    ``CudaLeanDecoder`` on CUDA), else ``StaticDecoder``. ``lean=True`` insists (and raises where it
    does not fit), ``False`` refuses."""
    if next(model.parameters()).device.type == "cuda":
        if lean or (lean is None and not compile_step and cuda_lean_wanted() and cuda_lean_fits(model, max_len) is None):
            from .cuda_lean import CudaLeanDecoder  # imports Triton: only where it runs
            return CudaLeanDecoder(model, batch_size, max_len)
        return StaticDecoder(model, batch_size, max_len, compile_step)
    if lean or (lean is None and not compile_step and lean_fits(model, max_len) is None):
        return LeanDecoder(model, batch_size, max_len)
    return StaticDecoder(model, batch_size, max_len, compile_step)


@torch.inference_mode()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, attention_mask=None,
                    static_cache: bool = True, compile_step: bool = False, decoder=None, lean: bool | None = None):
    """Greedy tokens ``[B, max_new_tokens]`` and timings {"prefill_s", "decode_s", "new_tokens"}.

    ``static_cache=False`` runs the model's own dynamic cache (the baseline this package
    improves on); pass a ``decoder`` to reuse its buffers (and compiled step) across calls;
    otherwise ``make_decoder`` picks one (``lean`` as there).
    """
    b, t = input_ids.shape
    t0 = time.perf_counter()
    if static_cache:
        dec = decoder or make_decoder(model, b, t + max_new_tokens, compile_step, lean)
        logits = dec.prefill(input_ids, attention_mask)
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
        logits, cache = out.logits[:, -1, :], out.cache if hasattr(out, "cache") else out.past_key_values
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    t1 = time.perf_counter()
    tokens = [logits.argmax(-1)]
    for _ in range(max_new_tokens - 1):
        if static_cache:
            logits = dec.step(tokens[-1])
        else:
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            out = model(input_ids=tokens[-1][:, None], attention_mask=mask, cache=cache, use_cache=True)
            logits = out.logits[:, -1, :]
        tokens.append(logits.argmax(-1))
    t2 = time.perf_counter()
    return torch.stack(tokens, 1), {"prefill_s": t1 - t0, "decode_s": t2 - t1, "new_tokens": max_new_tokens}

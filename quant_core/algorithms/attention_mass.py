"""How much of the attention each key token receives, recorded on a block's calibration forward.

A value projection's error at token ``k`` reaches every query ``q`` that reads it, in proportion
to ``a[q, k]``: summed over queries, the output error of ``dW`` at token ``k`` is weighted by
``m[k] = sum_q a[q, k]**2`` (the diagonal of ``A^T A``), averaged over heads. The plain Hessian
counts every token once; the first token of a window (the attention sink, read by nearly every
later position) then gets ~1/seqlen of the weight it has on the outputs, and GPTQ moves rounding
error into the directions only that token occupies (issue 16: GPTQ's v_proj lost 6 of 10.6
perplexity points out of domain, fixed by this weighting).

The probe is a transformers attention function (``AttentionInterface``, the library's extension
point) that computes the probabilities itself, hands ``m`` to a callback, then runs the model's
own attention implementation, so the block's outputs do not change.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from typing import Callable, Iterator

import torch
from torch import nn

PROBE = "quantllm_attention_mass"
_callbacks: dict[int, Callable[[torch.Tensor], None]] = {}  # id(attention module) -> callback
_originals: dict[int, str | None] = {}


def received_attention(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float,
                       causal: bool = True) -> torch.Tensor:
    """``[batch, keys]``: sum over queries of each key's squared attention probability, mean over heads.
    ``query [b, heads, q, d]``, ``key [b, kv_heads, k, d]``; ``mask`` as transformers passes it
    (None for plain causal attention, boolean True = may attend, or additive floats)."""
    heads, kv_heads = query.shape[1], key.shape[1]
    b, nq, nk = query.shape[0], query.shape[2], key.shape[2]
    rep = heads // kv_heads
    total = torch.zeros(b, nk, dtype=torch.float32, device=query.device)
    for g in range(kv_heads):  # the query heads reading one key head together: [b, rep * q, k] scores
        q = query[:, g * rep:(g + 1) * rep].float().reshape(b, rep * nq, -1)
        bias = _additive_mask(mask, g, rep, heads, nq, nk, causal, query.device)
        k = key[:, g].float().transpose(1, 2)
        # the mask is added inside the score product, and softmax, square and sum reuse its output:
        # a third fewer passes over the [b, rep * q, k] scores than one head at a time
        s = torch.baddbmm(bias, q, k, alpha=scaling) if bias is not None else torch.bmm(q, k).mul_(scaling)
        total += s.softmax(-1).nan_to_num_().square_().sum(1)
    return total / heads


def _additive_mask(mask: torch.Tensor | None, g: int, rep: int, heads: int, nq: int, nk: int, causal: bool,
                   device) -> torch.Tensor | None:
    """``[b or 1, rep * q, k]``: 0 where query heads ``g * rep ...`` may attend, -inf elsewhere (or the
    model's additive mask); None when nothing is masked."""
    if mask is None:
        if not causal:
            return None
        future = torch.ones(nq, nk, dtype=torch.bool, device=device).triu(nk - nq + 1)
        return torch.zeros(nq, nk, device=device).masked_fill_(future, float("-inf")).repeat(rep, 1)[None]
    m = mask[:, g * rep:(g + 1) * rep] if mask.shape[1] == heads else mask[:, :1].expand(-1, rep, -1, -1)
    m = m[..., :nk]
    bias = torch.zeros(m.shape, device=device).masked_fill_(~m, float("-inf")) if m.dtype == torch.bool else m.float()
    return bias.reshape(m.shape[0], rep * nq, nk)


@functools.cache
def _interfaces():
    """transformers' attention and mask registries, with the probe registered in both. Imported on
    first use, not with quant_core: they import transformers' modeling stack and with it Triton,
    which must not be initialised before kernels/triton_jit.py chooses interpreted or compiled."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    AttentionInterface.register(PROBE, _probe)
    AttentionMaskInterface.register(PROBE, _mask)
    return ALL_ATTENTION_FUNCTIONS, ALL_MASK_ATTENTION_FUNCTIONS


def _implementation(module: nn.Module, name: str | None) -> Callable:
    if name in (None, "eager", PROBE):  # the model's own eager function lives in its modeling file
        return sys.modules[type(module).__module__].eager_attention_forward
    return _interfaces()[0][name]


def _probe(module, query, key, value, attention_mask, scaling=None, **kwargs):
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    callback = _callbacks.get(id(module))
    original = _implementation(module, _originals.get(id(module)))
    if callback is not None:
        with torch.no_grad(), torch.autocast(query.device.type, enabled=False):  # fp32 also in bf16 calibration
            callback(received_attention(query, key, attention_mask, scale, getattr(module, "is_causal", True)))
    return original(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


def _mask(*args, **kwargs):
    """A model-level forward under the probe builds the mask its own implementation would."""
    masks = _interfaces()[1]
    original = next(reversed(_originals.values()), None) or "sdpa"
    return masks[original if original in masks else "sdpa"](*args, **kwargs)


@contextlib.contextmanager
def recording_attention_mass(attention: nn.Module, callback: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """While inside, every forward of ``attention`` (a transformers attention module) calls
    ``callback(m)`` with ``m [batch, tokens]`` as defined in the module docstring."""
    _interfaces()
    config = attention.config
    original = config._attn_implementation
    _callbacks[id(attention)], _originals[id(attention)] = callback, original
    config._attn_implementation = PROBE
    try:
        yield
    finally:
        config._attn_implementation = original
        _callbacks.pop(id(attention), None)
        _originals.pop(id(attention), None)

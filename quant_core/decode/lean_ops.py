"""The float operations of the lean step, two ways: PyTorch operations in transformers' order
(``TorchOps``, any CPU) and one C++ call each (``CppOps``, csrc/qdecode.cpp and qattend.cpp,
where the CPU kernels build). Same signatures; tests hold one against the other."""
from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from .lean_model import Norm


def _p(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class TorchOps:
    def norm(self, x: torch.Tensor, norm: Norm) -> torch.Tensor:
        """transformers' RMSNorm in float32, the same operations in the same order."""
        return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps))

    def rope_cache(self, qkv, b, t, heads, kv_heads, d, cos, sin, q_norm, k_norm, k_cache, v_cache, slot):
        """Rotated queries [B, heads, T, D]; rotated keys and values written into the layer's
        caches [B, kv_heads, maxlen, D] at ``slot``. cos/sin: [B, T, rd]."""
        hq, hk = heads * d, kv_heads * d
        q = qkv[:, :hq].view(b, t, heads, d)
        k = qkv[:, hq: hq + hk].view(b, t, kv_heads, d)
        v = qkv[:, hq + hk:].view(b, t, kv_heads, d)
        if q_norm is not None:
            q, k = self.norm(q, q_norm), self.norm(k, k_norm)
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        k_cache[:, :, slot: slot + t] = k.transpose(1, 2)
        v_cache[:, :, slot: slot + t] = v.transpose(1, 2)
        return q.transpose(1, 2)

    def swiglu(self, gu: torch.Tensor, inter: int) -> torch.Tensor:
        return F.silu(gu[:, :inter]) * gu[:, inter:]

    def attend(self, q, k_cache, v_cache, n, valid, attn_mask, scale) -> torch.Tensor:
        """Attention of q [B, heads, T, D] over cache positions [0, n): [B * T, heads * D]."""
        b, heads, t, d = q.shape
        att = F.scaled_dot_product_attention(q, k_cache[:, :, :n], v_cache[:, :, :n], attn_mask=attn_mask,
                                             is_causal=attn_mask is None and t > 1, scale=scale, enable_gqa=True)
        return att.transpose(1, 2).reshape(b * t, heads * d)


class CppOps(TorchOps):
    """One C++ call per operation (``lib``: a loaded CPU kernel library, cpu_build.load_library)."""

    def __init__(self, lib):
        self.lib = lib
        self.threads = torch.get_num_threads()

    def norm(self, x: torch.Tensor, norm: Norm) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        self.lib.qrms_norm(_p(x), x.numel() // x.shape[-1], x.shape[-1], _p(norm.weight), norm.eps, _p(out))
        return out

    def rope_cache(self, qkv, b, t, heads, kv_heads, d, cos, sin, q_norm, k_norm, k_cache, v_cache, slot):
        q = torch.empty(b, heads, t, d)
        qn, kn = (q_norm.weight, k_norm.weight) if q_norm is not None else (None, None)
        eps = q_norm.eps if q_norm is not None else 0.0
        self.lib.qrope_cache(_p(qkv), b, t, heads, kv_heads, d, cos.shape[-1], _p(cos), _p(sin), _p(qn), _p(kn), eps,
                             _p(q), _p(k_cache), _p(v_cache), k_cache.shape[2], slot)
        return q

    def swiglu(self, gu: torch.Tensor, inter: int) -> torch.Tensor:
        out = torch.empty(gu.shape[0], inter)
        self.lib.qswiglu(_p(gu), gu.shape[0], inter, _p(out))
        return out

    def attend(self, q, k_cache, v_cache, n, valid, attn_mask, scale) -> torch.Tensor:
        b, heads, t, d = q.shape
        if t != 1 and n != t:  # a chunk after cached positions (the lean step makes none): PyTorch's SDPA
            return super().attend(q, k_cache, v_cache, n, valid, attn_mask, scale)
        out = torch.empty(b * t, heads * d)
        if t != 1:  # a prompt at positions [0, t), causal: a padded row sums as alone (qattend_prompt), SDPA did not
            self.lib.qattend_prompt(_p(q), _p(k_cache), _p(v_cache), b, heads, k_cache.shape[1], d, k_cache.shape[2],
                                    t, _p(valid) if attn_mask is not None else None, scale, _p(out), self.threads)
            return out
        self.lib.qattend(_p(q), _p(k_cache), _p(v_cache), b, heads, k_cache.shape[1], d, k_cache.shape[2], n,
                         _p(valid) if attn_mask is not None else None, scale, _p(out), self.threads)
        return out


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' rotary embedding of ``x`` [B, T, heads, D] (first ``cos.shape[-1]`` dims)."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    rd = cos.shape[-1]
    rot = x[..., :rd]
    half = rd // 2
    turned = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    out = rot * cos + turned * sin
    return out if rd == x.shape[-1] else torch.cat((out, x[..., rd:]), dim=-1)

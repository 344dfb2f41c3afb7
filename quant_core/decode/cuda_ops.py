"""The non-linear operations of the CUDA lean step, one Triton kernel each.

Under transformers' modules a Llama layer's decode runs ~30 small kernels besides its linears
(RMSNorm alone is seven: cast, pow, mean, add, rsqrt, mul, mul); at ~2.5 us each they were ~2.8 ms
of a 7.25 ms bf16 token on the synthetic 8B. Here a layer has five: residual add + RMSNorm (twice),
rotary + K/V cache write, attention over the cache, SwiGLU.

Each kernel rounds where transformers rounds (the model dtype after the norm, before the weight
multiply, after silu), so bf16 results stay within a unit of the modules'; sums run in fp32.
tests/quant_core/decode/test_cuda_ops.py compares each with the modules' PyTorch operations.

``pdl``: the kernel is launched with programmatic dependent launch, so that it starts while the kernel
before it on the stream ends, and lets the next one start (our CUDA GEMMs stream their first weights
before their own wait) once it is past its wait. Before ``gdc_wait`` a kernel reads only constants
(norm weights): whatever the previous kernel writes, and every write of its own, comes after it.
"""
from __future__ import annotations

import torch

from ..kernels.triton_jit import gdc_launch_dependents, gdc_wait, jit, tl, triton


@jit
def _after_previous(PDL: tl.constexpr):
    """Under PDL: wait until the previous kernel on the stream has finished (its writes visible), then let
    the next one launch."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@jit
def _add_rms_norm(x_ptr, y_ptr, w_ptr, out_ptr, n, eps, ADD: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    _after_previous(PDL)
    x = tl.load(x_ptr + row * n + cols, mask=mask, other=0.0)
    if ADD:  # the residual stream keeps the model dtype, as transformers' ``residual + hidden`` does
        x = (x.to(tl.float32) + tl.load(y_ptr + row * n + cols, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(x_ptr + row * n + cols, x, mask=mask)
    xf = x.to(tl.float32)
    r = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / n + eps)
    h = (xf * r).to(x.dtype).to(tl.float32)
    tl.store(out_ptr + row * n + cols, (h * w).to(x.dtype), mask=mask)


def add_rms_norm(x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float,
                 pdl: bool = False) -> torch.Tensor:
    """``x += y`` in place (when ``y`` is given), then RMSNorm(x) * weight. x, y: [M, H] contiguous."""
    out = torch.empty_like(x)
    n = x.shape[-1]
    _add_rms_norm[(x.shape[0],)](x, x if y is None else y, weight, out, n, eps, ADD=y is not None,
                                 BLOCK=triton.next_power_of_2(n), PDL=pdl, num_warps=4 if n <= 4096 else 8,
                                 launch_pdl=pdl)
    return out


@jit
def _rope_cache(qkv_ptr, cos_ptr, sin_ptr, qn_ptr, kn_ptr, qk_eps, q_ptr, k_ptr, v_ptr, slot_ptr,
                T, HEADS, KV_HEADS, MAXLEN, D: tl.constexpr, RD: tl.constexpr, QK_NORM: tl.constexpr,
                BLOCK_D: tl.constexpr, PDL: tl.constexpr):
    """Program (row, head): a query head is rotated into q [rows, heads, D]; a key head is rotated
    and written with its value head into the caches [B, kv_heads, maxlen, D] at slot + t."""
    row = tl.program_id(0)
    head = tl.program_id(1)
    b = row // T
    t = row % T
    _after_previous(PDL)
    width = (HEADS + 2 * KV_HEADS) * D
    i = tl.arange(0, BLOCK_D)
    inside = i < D
    rot = i < RD
    half = RD // 2
    partner = tl.where(i < half, i + half, i - half)
    src = qkv_ptr + row * width + head * D
    x = tl.load(src + i, mask=inside, other=0.0)
    xp = tl.load(src + partner, mask=inside & rot, other=0.0)
    dt = x.dtype
    xf = x.to(tl.float32)
    xpf = xp.to(tl.float32)
    if QK_NORM:  # Qwen3: RMSNorm over each q/k head's dims before rotary
        is_q = head < HEADS
        w = tl.where(is_q, tl.load(qn_ptr + i, mask=inside, other=0.0), tl.load(kn_ptr + i, mask=inside, other=0.0))
        wp = tl.where(is_q, tl.load(qn_ptr + partner, mask=inside & rot, other=0.0),
                      tl.load(kn_ptr + partner, mask=inside & rot, other=0.0))
        r = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / D + qk_eps)
        xf = ((xf * r).to(dt).to(tl.float32) * w.to(tl.float32)).to(dt).to(tl.float32)
        xpf = ((xpf * r).to(dt).to(tl.float32) * wp.to(tl.float32)).to(dt).to(tl.float32)
    c = tl.load(cos_ptr + row * RD + i, mask=inside & rot, other=1.0).to(tl.float32)
    s = tl.load(sin_ptr + row * RD + i, mask=inside & rot, other=0.0).to(tl.float32)
    turned = tl.where(i < half, -xpf, xpf)
    out = tl.where(rot, xf * c + turned * s, xf).to(dt)
    slot = tl.load(slot_ptr) + t
    if head < HEADS:
        tl.store(q_ptr + (row * HEADS + head) * D + i, out, mask=inside)
    else:
        kv = head - HEADS
        at = ((b * KV_HEADS + kv) * MAXLEN + slot) * D + i
        tl.store(k_ptr + at, out, mask=inside)
        v = tl.load(src + KV_HEADS * D + i, mask=inside, other=0.0)
        tl.store(v_ptr + at, v, mask=inside)


def rope_cache(qkv, t, heads, kv_heads, d, cos, sin, q_norm, k_norm, k_cache, v_cache, slot,
               pdl: bool = False) -> torch.Tensor:
    """Rotated queries [B * T, heads, D]; rotated keys and the values written into one layer's caches
    [B, kv_heads, maxlen, D] at positions slot[0] + [0, T). qkv [B * T, (heads + 2 kv_heads) D] contiguous,
    cos/sin [B * T, rd], slot: a 1-element int64 tensor (a graph moves it in place)."""
    rows = qkv.shape[0]
    q = torch.empty(rows, heads, d, dtype=qkv.dtype, device=qkv.device)
    qn = q_norm.weight if q_norm is not None else qkv
    kn = k_norm.weight if k_norm is not None else qkv
    _rope_cache[(rows, heads + kv_heads)](qkv, cos, sin, qn, kn, q_norm.eps if q_norm is not None else 0.0, q,
                                          k_cache, v_cache, slot, t, heads, kv_heads, k_cache.shape[2], D=d,
                                          RD=cos.shape[-1], QK_NORM=q_norm is not None,
                                          BLOCK_D=triton.next_power_of_2(d), PDL=pdl, num_warps=1, launch_pdl=pdl)
    return q


@jit
def _attend(q_ptr, k_ptr, v_ptr, valid_ptr, slot_ptr, out_ptr, scale, HEADS, KV_HEADS, MAXLEN,
            D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr):
    """Program (row, head): one query over cache positions [0, slot], skipping those ``valid`` marks
    as padding; online softmax in fp32."""
    b = tl.program_id(0)
    head = tl.program_id(1)
    _after_previous(PDL)
    kv = head // (HEADS // KV_HEADS)
    i = tl.arange(0, BLOCK_D)
    inside = i < D
    q = tl.load(q_ptr + (b * HEADS + head) * D + i, mask=inside, other=0.0).to(tl.float32) * scale
    n = tl.load(slot_ptr) + 1
    base = (b * KV_HEADS + kv) * MAXLEN * D
    m = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), 0)
    total = tl.sum(tl.zeros([BLOCK_N], tl.float32), 0)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for start in range(0, n, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        keep = (pos < n) & (tl.load(valid_ptr + b * MAXLEN + pos, mask=pos < n, other=0) != 0)
        at = base + pos[:, None] * D + i[None, :]
        k = tl.load(k_ptr + at, mask=keep[:, None] & inside[None, :], other=0.0).to(tl.float32)
        score = tl.where(keep, tl.sum(k * q[None, :], 1), float("-inf"))
        m_new = tl.maximum(m, tl.max(score, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block of padding only: no exp(-inf + inf)
        p = tl.exp(score - m_safe)
        fade = tl.exp(m - m_safe)
        v = tl.load(v_ptr + at, mask=keep[:, None] & inside[None, :], other=0.0).to(tl.float32)
        acc = acc * fade + tl.sum(p[:, None] * v, 0)
        total = total * fade + tl.sum(p, 0)
        m = m_new
    tl.store(out_ptr + (b * HEADS + head) * D + i, (acc / total).to(out_ptr.dtype.element_ty), mask=inside)


def attend(q, k_cache, v_cache, valid, slot, scale, pdl: bool = False, block_n: int = 32) -> torch.Tensor:
    """One new token per row: q [B, heads, D] over its cache [B, kv_heads, maxlen, D] positions
    [0, slot[0]] where ``valid`` [B, maxlen] (bool) is set: [B, heads * D]. ``block_n``: cache positions a
    program reads at once (a power of two)."""
    b, heads, d = q.shape
    out = torch.empty(b, heads * d, dtype=q.dtype, device=q.device)
    _attend[(b, heads)](q, k_cache, v_cache, valid, slot, out, scale, heads, k_cache.shape[1], k_cache.shape[2],
                        D=d, BLOCK_D=triton.next_power_of_2(d), BLOCK_N=block_n, PDL=pdl,
                        num_warps=4 if block_n <= 64 else 8, launch_pdl=pdl)
    return out


@jit
def _swiglu(gu_ptr, out_ptr, inter, BLOCK: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    _after_previous(PDL)
    g = tl.load(gu_ptr + row * 2 * inter + cols, mask=mask, other=0.0)
    u = tl.load(gu_ptr + row * 2 * inter + inter + cols, mask=mask, other=0.0).to(tl.float32)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)  # silu rounds to the dtype before the product
    tl.store(out_ptr + row * inter + cols, (act * u).to(g.dtype), mask=mask)


def swiglu(gu: torch.Tensor, inter: int, pdl: bool = False) -> torch.Tensor:
    """silu(gate) * up of gu [M, 2 * inter] (gate columns first): [M, inter]."""
    out = torch.empty(gu.shape[0], inter, dtype=gu.dtype, device=gu.device)
    block = 1024
    _swiglu[(gu.shape[0], triton.cdiv(inter, block))](gu, out, inter, BLOCK=block, PDL=pdl, num_warps=4,
                                                     launch_pdl=pdl)
    return out

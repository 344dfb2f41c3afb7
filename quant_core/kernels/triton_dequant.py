"""Dequantize the whole weight to ``[K, N]`` in the activation dtype, for cuBLAS to multiply.

For many rows (long prefills) the fused GEMM dequantizes every weight tile once per
block of rows, while cuBLAS's tensor-core pipeline outruns Triton's; writing the
weight out once and calling ``torch.mm`` can then be faster. The tuner times this
path beside the fused GEMM and keeps whichever is faster for the shape.
"""
from __future__ import annotations

import triton.language as tl

from .triton_jit import dequant, jit


@jit
def dequant_kernel(qw_ptr, s_ptr, z_ptr, gidx_ptr, lut_ptr, out_ptr, N, K, GROUP_COLS,
                   BITS: tl.constexpr, ZMODE: tl.constexpr, SYM_ZERO: tl.constexpr,
                   CODEBOOK: tl.constexpr, HAS_GIDX: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    P: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    offs_k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_k < K)[:, None] & (offs_n < N)[None, :]
    w = tl.load(qw_ptr + (offs_k // P)[:, None] * N + offs_n[None, :], mask=mask, other=0)
    u = (w >> ((offs_k % P) * BITS)[:, None]) & MASK
    if HAS_GIDX:
        g = tl.load(gidx_ptr + offs_k, mask=offs_k < K, other=0)
    else:
        g = offs_k // GROUP_COLS
    zoff = g[:, None] * N + offs_n[None, :]
    s = tl.load(s_ptr + zoff, mask=mask, other=0.0).to(tl.float32)
    v = dequant(u, s, lut_ptr, z_ptr + zoff, mask, CODEBOOK, ZMODE, SYM_ZERO)
    tl.store(out_ptr + offs_k[:, None] * N + offs_n[None, :], v.to(out_ptr.dtype.element_ty), mask=mask)

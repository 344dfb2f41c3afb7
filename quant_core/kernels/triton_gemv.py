"""Split-K GEMV for few rows (decode): ``out[m] = x[m] @ W.T`` with W dequantized in registers.

Grid: (rows m, blocks of N, K splits). Row m is the fastest grid axis so the
programs that read the same weight tile run together and share it through L2.
Each program walks its K range a tile of ``[BLOCK_KW words, BLOCK_N channels]``
at a time: one coalesced int32 read per word, then the ``P`` codes of each word
are peeled off with shifts and multiplied by the matching (strided, L1-resident)
activations. Scales and zero points are applied per word row, not per code:
``sum_j (u_j - z) * s * x_j = s * (sum_j u_j x_j - z * sum_j x_j)`` within a group.
With several K splits the fp32 partial sums meet through atomic adds (``store_split``).

Codebook formats look levels up in registers (``triton_codebook``) when ``CB_ASM``
holds the asm, else in a table in memory (the interpreter's path).
"""
from __future__ import annotations

import triton.language as tl

from .triton_codebook import levels8
from .triton_jit import dequant, jit, store_split


@jit
def gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, gidx_ptr, lut_ptr, out_ptr, acc_ptr, cnt_ptr,
                N, K, KW, GROUP_COLS, stride_xm, stride_om, words_per_split,
                BITS: tl.constexpr, ZMODE: tl.constexpr, SYM_ZERO: tl.constexpr,
                CODEBOOK: tl.constexpr, HAS_GIDX: tl.constexpr, ONE_GROUP_PER_TILE: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr, REDUCE: tl.constexpr,
                CB_ASM: tl.constexpr = "", EVEN: tl.constexpr = False):
    P: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    kw_start = pid_k * words_per_split
    kw_end = tl.minimum(kw_start + words_per_split, KW)
    x_row = x_ptr + pid_m * stride_xm
    acc = tl.zeros([BLOCK_KW, BLOCK_N], dtype=tl.float32)
    for kw0 in range(kw_start, kw_start + words_per_split, BLOCK_KW):  # masked past kw_end
        offs_kw = kw0 + tl.arange(0, BLOCK_KW)
        kw_mask = offs_kw < kw_end
        tile_mask = kw_mask[:, None] & n_mask[None, :]
        if EVEN:  # every tile full (K, the K splits and N divide evenly): no masks to compute
            w = tl.load(qw_ptr + offs_kw[:, None] * N + offs_n[None, :])
        else:
            w = tl.load(qw_ptr + offs_kw[:, None] * N + offs_n[None, :], mask=tile_mask, other=0)
        if HAS_GIDX:
            # act-order: each column has its own group, so dequantize code by code
            for j in tl.static_range(P):
                k = offs_kw * P + j
                k_ok = k < K
                xj = tl.load(x_row + k, mask=k_ok, other=0.0).to(tl.float32)
                g = tl.load(gidx_ptr + k, mask=k_ok, other=0)
                gm = k_ok[:, None] & n_mask[None, :]
                s = tl.load(s_ptr + g[:, None] * N + offs_n[None, :], mask=gm, other=0.0).to(tl.float32)
                u = (w >> (j * BITS)) & MASK
                v = dequant(u, s, lut_ptr, z_ptr + g[:, None] * N + offs_n[None, :], gm, CODEBOOK, ZMODE, SYM_ZERO)
                acc += v * xj[:, None]
        elif CODEBOOK:  # 4-bit codebooks (the only ones): levels from registers (levels8)
            t = _codebook_dot(w, x_row, lut_ptr, offs_kw, K, CB_ASM, EVEN)
        else:
            t = tl.zeros([BLOCK_KW, BLOCK_N], dtype=tl.float32)
            xs = tl.zeros([BLOCK_KW], dtype=tl.float32)
            for j in tl.static_range(P):
                xj = _load_x(x_row, offs_kw * P + j, K, EVEN)
                # code j moved into the top mantissa bits of 1.0: f = 1 + u / 2**BITS, with one
                # shift and one and-or per code (no int->float conversion, no subtraction)
                if 23 - BITS - j * BITS >= 0:  # compile-time branch and shift amounts
                    mant = (w << (23 - BITS - j * BITS)) & (MASK << (23 - BITS))
                else:
                    mant = (w >> (j * BITS + BITS - 23)) & (MASK << (23 - BITS))
                t += (mant | 0x3F800000).to(tl.float32, bitcast=True) * xj[:, None]
                xs += xj
            t = (t - xs[:, None]) * (1 << BITS)  # sum_j u_j x_j, from sum_j (1 + u_j / 2**BITS) x_j
        if not HAS_GIDX:
            if ONE_GROUP_PER_TILE:
                g1 = (kw0 * P) // GROUP_COLS
                zoff = g1 * N + offs_n
                zm = n_mask & (kw0 + offs_n * 0 < kw_end)  # a tile past K must not read a group past G
                if EVEN:
                    s = tl.load(s_ptr + zoff).to(tl.float32)[None, :]
                else:
                    s = tl.load(s_ptr + zoff, mask=zm, other=0.0).to(tl.float32)[None, :]
            else:
                g2 = (offs_kw * P) // GROUP_COLS
                zoff = g2[:, None] * N + offs_n[None, :]
                zm = tile_mask
                s = tl.load(s_ptr + zoff, mask=zm, other=0.0).to(tl.float32)
            if CODEBOOK:
                acc += t * s
            elif ZMODE == 0:
                acc += (t - SYM_ZERO * xs[:, None]) * s
            elif ZMODE == 1:
                z = tl.load(z_ptr + zoff, mask=zm, other=0).to(tl.float32)
                if ONE_GROUP_PER_TILE:
                    z = z[None, :]
                acc += (t - z * xs[:, None]) * s
            else:
                mn = tl.load(z_ptr + zoff, mask=zm, other=0.0).to(tl.float32)
                if ONE_GROUP_PER_TILE:
                    mn = mn[None, :]
                acc += t * s + mn * xs[:, None]
    tile = pid_m * tl.num_programs(1) + pid_n
    store_split(tl.sum(acc, axis=0), out_ptr + pid_m * stride_om + offs_n, acc_ptr + pid_m * N + offs_n,
                n_mask, cnt_ptr, tile, tl.num_programs(2), REDUCE)


@jit
def _load_x(x_row, k, K, EVEN: tl.constexpr):
    if EVEN:
        return tl.load(x_row + k).to(tl.float32)
    return tl.load(x_row + k, mask=k < K, other=0.0).to(tl.float32)


@jit
def _codebook_dot(w, x_row, lut_ptr, offs_kw, K, CB_ASM: tl.constexpr, EVEN: tl.constexpr):
    """``sum_j levels[code j] * x[8 * word + j]`` per word of ``w`` (8 codes of 4 bits a word)."""
    v0, v1, v2, v3, v4, v5, v6, v7 = levels8(w, lut_ptr, CB_ASM)
    k = offs_kw * 8
    t = v0 * _load_x(x_row, k, K, EVEN)[:, None]
    t += v1 * _load_x(x_row, k + 1, K, EVEN)[:, None]
    t += v2 * _load_x(x_row, k + 2, K, EVEN)[:, None]
    t += v3 * _load_x(x_row, k + 3, K, EVEN)[:, None]
    t += v4 * _load_x(x_row, k + 4, K, EVEN)[:, None]
    t += v5 * _load_x(x_row, k + 5, K, EVEN)[:, None]
    t += v6 * _load_x(x_row, k + 6, K, EVEN)[:, None]
    t += v7 * _load_x(x_row, k + 7, K, EVEN)[:, None]
    return t

"""Tiled GEMM for many rows (prefill, batched decode): dequantize a weight tile, then ``tl.dot``.

Each program owns a ``[BLOCK_M, BLOCK_N]`` output tile (grouped along M so
neighbouring programs reuse weight tiles in L2) and one K split. Per K step it
reads the activations ``[BLOCK_M, BLOCK_K]`` and the words covering
``[BLOCK_K, BLOCK_N]`` codes (each word row read once per code it holds; the
repeats hit L1), dequantizes in fp32 and feeds the tensor cores in the
activation dtype (fp32 activations: an exact fp32 dot, not tf32). When a whole K step lies in one group the scales are one
vector per step instead of a tile.
"""
from __future__ import annotations

import triton.language as tl

from .triton_codebook import levels_tile
from .triton_jit import as_f32, dequant, jit, store_split


@jit
def gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, gidx_ptr, lut_ptr, out_ptr, acc_ptr, cnt_ptr,
                M, N, K, GROUP_COLS, stride_xm, stride_om, k_per_split,
                BITS: tl.constexpr, ZMODE: tl.constexpr, SYM_ZERO: tl.constexpr,
                CODEBOOK: tl.constexpr, HAS_GIDX: tl.constexpr, ONE_GROUP_PER_TILE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr, EXPAND: tl.constexpr, REDUCE: tl.constexpr, DOT_F32: tl.constexpr,
                CB_ASM: tl.constexpr = ""):
    P: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, k_start + k_per_split, BLOCK_K):  # masked past k_end
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_end
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        tile_mask = k_mask[:, None] & n_mask[None, :]
        if EXPAND:  # one read per word, codes peeled into a [words, P, BLOCK_N] block
            offs_kw = k0 // P + tl.arange(0, BLOCK_K // P)
            wmask = (offs_kw < (k_end + P - 1) // P)[:, None] & n_mask[None, :]
            w = tl.load(qw_ptr + offs_kw[:, None] * N + offs_n[None, :], mask=wmask, other=0)
            shifts = tl.arange(0, P) * BITS
            u = tl.reshape((w[:, None, :] >> shifts[None, :, None]) & MASK, (BLOCK_K, BLOCK_N))
        else:  # each word read once per code it holds (the repeats hit L1)
            w = tl.load(qw_ptr + (offs_k // P)[:, None] * N + offs_n[None, :], mask=tile_mask, other=0)
            u = (w >> ((offs_k % P) * BITS)[:, None]) & MASK
        if ONE_GROUP_PER_TILE:
            # One group per K step: the dot runs on unscaled codes (small integers, exact in
            # bf16/fp16) and the step's scale is applied to the [BLOCK_M, BLOCK_N] result,
            # which saves a multiply per weight element.
            g1 = k0 // GROUP_COLS
            zoff = g1 * N + offs_n
            zm = n_mask & (k0 + offs_n * 0 < k_end)  # a step past K must not read a group past G
            s = tl.load(s_ptr + zoff, mask=zm, other=0.0).to(tl.float32)[None, :]
            if CODEBOOK and EXPAND:  # levels of the words' codes in registers (triton_codebook)
                v = levels_tile(w, lut_ptr, CB_ASM, BLOCK_K, BLOCK_N)
            elif CODEBOOK:
                v = tl.load(lut_ptr + u)
            elif ZMODE == 0:
                v = as_f32(u) - SYM_ZERO
            elif ZMODE == 1:
                v = as_f32(u) - tl.load(z_ptr + zoff, mask=zm, other=0).to(tl.float32)[None, :]
            else:
                v = as_f32(u)
            if DOT_F32:
                part = tl.dot(x.to(tl.float32), v, input_precision="ieee")
            else:
                part = tl.dot(x, v.to(x.dtype))
            acc += part * s
            if ZMODE == 2:  # w = u * s + min: the min's share is min * sum(x over the step)
                mn = tl.load(z_ptr + zoff, mask=zm, other=0.0).to(tl.float32)
                acc += tl.sum(x.to(tl.float32), axis=1)[:, None] * mn[None, :]
        else:
            if HAS_GIDX:
                g = tl.load(gidx_ptr + offs_k, mask=k_mask, other=0)
                zoff = g[:, None] * N + offs_n[None, :]
            else:
                zoff = (offs_k // GROUP_COLS)[:, None] * N + offs_n[None, :]
            s = tl.load(s_ptr + zoff, mask=tile_mask, other=0.0).to(tl.float32)
            v = dequant(u, s, lut_ptr, z_ptr + zoff, tile_mask, CODEBOOK, ZMODE, SYM_ZERO)
            if DOT_F32:
                acc = tl.dot(x.to(tl.float32), v, acc, input_precision="ieee")
            else:
                acc = tl.dot(x, v.to(x.dtype), acc)
    store_split(acc, out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
                acc_ptr + offs_m[:, None] * N + offs_n[None, :], m_mask[:, None] & n_mask[None, :],
                cnt_ptr, pid, tl.num_programs(1), REDUCE)

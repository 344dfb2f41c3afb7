"""The CUDA kernel's weight layout: codes shuffled once at load so each lane's loads are MMA fragments.

``mma.sync.m16n8k16`` gives lane ``l`` (``g = l // 4``, ``t = l % 4``) of a warp the B values at
``k = 2t + 8r + h`` of column ``g`` (register ``r``, half ``h``). We cut the weight ``W^T [K, N]`` into
units of 16 k-rows x 64 columns (eight n8 subtiles ``s``, column ``8s + g``) and store each unit
lane by lane: the 1024 codes a warp needs for one unit are one contiguous 512-byte read (int4),
16 bytes per lane, and every register of B comes from one word with a shift and a mask.

Within a lane's bytes, code slots are ordered to suit the decoder (``csrc/cuda_dequant.cuh``):

* ``int4``: words ``j = 0..3`` hold subtiles ``2j + f``; nibble ``p = 2f + r + 4h`` (a register's two
  values sit 16 bits apart, so one mask-and-or with 0x6400 makes two fp16 numbers).
* ``cb4`` (nf4, fp4): nibble ``p = 4f + 2r + h`` (four neighbouring codes index byte tables).
* ``int8``: two 512-byte halves (subtiles 0-3 and 4-7, so each lane reads two conflict-free 16-byte
  vectors); word ``j`` of half ``e`` is subtile ``4e + j``, byte ``p = 2r + h``.

Units are stored ``[K/16][N/64]``: one 16-row band of the whole weight is contiguous, so a block's
stage (a few bands x its columns) is a few long coalesced runs. Group tensors (scales, zero points,
minimums) become ``[G, N]`` with columns permuted inside each 64-column block so that the 8 columns
a lane needs (``8s + g`` for ``s = 0..7``) are 8 neighbours: one 16-byte read per group row.

Everything here is plain torch and runs on any device; ``unshuffle_codes`` inverts
``shuffle_codes`` exactly (tested on CPU).
"""
from __future__ import annotations

import functools

import torch

UNIT_K, UNIT_N = 16, 64
KINDS = ("int4", "cb4", "int8")


@functools.lru_cache(maxsize=None)
def _slot_index(kind: str) -> torch.Tensor:
    """For each code slot of a unit in storage order, its index ``k * 64 + n`` in the dense unit."""
    if kind not in KINDS:
        raise ValueError(f"unknown CUDA layout kind {kind!r}; known: {', '.join(KINDS)}")
    k_of, n_of = [], []
    halves = 2 if kind == "int8" else 1
    for e in range(halves):
        for lane in range(32):
            g, t = lane // 4, lane % 4
            for j in range(4):
                for p in range(4 if kind == "int8" else 8):
                    if kind == "int4":
                        s, r, h = 2 * j + (p % 4) // 2, p % 2, p // 4
                    elif kind == "cb4":
                        s, r, h = 2 * j + p // 4, (p % 4) // 2, p % 2
                    else:
                        s, r, h = 4 * e + j, p // 2, p % 2
                    k_of.append(2 * t + 8 * r + h)
                    n_of.append(8 * s + g)
    index = torch.tensor(k_of) * UNIT_N + torch.tensor(n_of)
    assert sorted(index.tolist()) == list(range(UNIT_K * UNIT_N)), "every code of a unit exactly once"
    return index


def kind_bits(kind: str) -> int:
    return 8 if kind == "int8" else 4


def shuffle_codes(codes: torch.Tensor, kind: str) -> torch.Tensor:
    """uint8 codes ``[N, K]`` (N % 64 == 0, K % 16 == 0) -> uint8 ``[K/16, N/64, 128 * bits]``."""
    n, k = codes.shape
    if n % UNIT_N or k % UNIT_K:
        raise ValueError(f"the CUDA layout needs out_features % {UNIT_N} == 0 and in_features % {UNIT_K} == 0, "
                         f"got {n} x {k}")
    dense = codes.reshape(n // UNIT_N, UNIT_N, k // UNIT_K, UNIT_K).permute(2, 0, 3, 1)  # [K/16, N/64, 16, 64]
    dense = dense.reshape(k // UNIT_K, n // UNIT_N, UNIT_K * UNIT_N)
    slots = dense.index_select(2, _slot_index(kind).to(codes.device))
    if kind_bits(kind) == 8:
        return slots.contiguous()
    return (slots[..., 0::2] | (slots[..., 1::2] << 4)).contiguous()  # slot 2i in the low nibble of byte i


def unshuffle_codes(units: torch.Tensor, kind: str, out_features: int, in_features: int) -> torch.Tensor:
    """Inverse of ``shuffle_codes``: ``[K/16, N/64, bytes]`` -> uint8 codes ``[N, K]``."""
    if kind_bits(kind) == 8:
        slots = units
    else:
        slots = torch.stack((units & 15, units >> 4), dim=-1).reshape(*units.shape[:2], -1)
    dense = torch.empty_like(slots)
    dense[..., _slot_index(kind).to(units.device)] = slots
    dense = dense.reshape(in_features // UNIT_K, out_features // UNIT_N, UNIT_K, UNIT_N).permute(1, 3, 0, 2)
    return dense.reshape(out_features, in_features).contiguous()


def shuffle_groups(t: torch.Tensor) -> torch.Tensor:
    """A per-(column, group) tensor ``[N, G]`` -> ``[G, N]``, columns ``8s + g`` of each 64-block at ``8g + s``."""
    n, groups = t.shape
    return t.t().reshape(groups, n // UNIT_N, 8, 8).transpose(-1, -2).reshape(groups, n).contiguous()


def unshuffle_groups(t: torch.Tensor) -> torch.Tensor:
    groups, n = t.shape
    return t.reshape(groups, n // UNIT_N, 8, 8).transpose(-1, -2).reshape(groups, n).t().contiguous()


def codebook_tables(levels, dtype: torch.dtype) -> list[int]:
    """The decoder's 8 words: low bytes of the 16 levels (as ``dtype``) in words 0-3, high bytes in 4-7."""
    if len(levels) != 16:
        raise ValueError(f"the CUDA codebook decoder takes 16 levels, got {len(levels)}")
    bits = torch.tensor(levels, dtype=torch.float32).to(dtype).view(torch.int16).to(torch.int32) & 0xFFFF
    lo, hi = (bits & 0xFF).tolist(), (bits >> 8).tolist()
    words = []
    for table in (lo, hi):
        for w in range(4):
            words.append(sum(table[4 * w + i] << (8 * i) for i in range(4)))
    return words


def act_order_permutation(g_idx: torch.Tensor, group_size: int) -> torch.Tensor:
    """The column order that makes act-order groups contiguous (``g_idx[perm] == arange(K) // group``),
    or ValueError where no order does (groups of unequal size)."""
    perm = torch.argsort(g_idx.to(torch.int64), stable=True)
    want = torch.arange(g_idx.numel(), device=g_idx.device) // group_size
    if not torch.equal(g_idx.to(torch.int64)[perm], want):
        raise ValueError(f"g_idx does not split the columns into groups of exactly {group_size}; "
                         f"run this layer with kernel='triton'")
    return perm

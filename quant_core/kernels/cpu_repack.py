"""Checkpoint layout (``formats.pack_codes``) -> the C++ CPU kernels' layout, done once at load.

The kernels see every format as ``w = val(code) * scale + off`` per group, with
``val(code) = code`` for int formats (the zero point folds into ``off``) and
``val(code) = lut[code]`` for codebook formats (``off = 0``). See csrc/cpu_qgemm.cpp
for the byte layout; this file only reshuffles codes and precomputes ``off``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..packed import PackedWeight
from ..primitives import default_g_idx

BLOCK = 32  # input columns per SIMD block; group sizes must be whole blocks
LAYOUT_NIBBLES, LAYOUT_BYTES = 0, 1


@dataclass
class CpuWeight:
    qweight: torch.Tensor  # uint8 [N, Kp/2] (nibbles) or int8-as-uint8 [N, Kp] (bytes)
    layout: int
    in_features: int
    padded_in: int  # Kp
    out_features: int
    n_groups: int
    blocks_per_group: int
    scales: torch.Tensor  # float32 [N, G]
    offs: torch.Tensor  # float32 [N, G]
    lut: torch.Tensor | None  # float32 [16] for codebook formats
    perm: torch.Tensor | None  # int64 [K]: input column order (act-order g_idx), or None

    def nbytes(self) -> int:
        ts = [self.qweight, self.scales, self.offs] + [t for t in (self.lut, self.perm) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)


def group_size_reason(group_size: int) -> str | None:
    if group_size == -1 or (group_size > 0 and group_size % BLOCK == 0):
        return None
    return f"group_size {group_size} is not -1 or a multiple of {BLOCK}"


def _column_order(packed: PackedWeight) -> torch.Tensor | None:
    """Act-order checkpoints list groups out of column order: sort columns by group so that
    each group is contiguous again (the activations are permuted the same way per call)."""
    if packed.g_idx is None:
        return None
    g_idx = packed.g_idx.long()
    perm = torch.argsort(g_idx, stable=True)
    standard = default_g_idx(packed.in_features, packed.group_size).long()
    if not torch.equal(g_idx[perm], standard):
        raise ValueError("g_idx does not assign group_size columns to each group; the CPU kernels "
                         "cannot run it: force the 'reference' kernel for this model")
    return perm


def repack(packed: PackedWeight) -> CpuWeight:
    fmt = packed.fmt
    n, k = packed.out_features, packed.in_features
    reason = group_size_reason(packed.group_size)
    if reason:
        raise ValueError(reason)
    kp = -(-k // BLOCK) * BLOCK
    perm = _column_order(packed)
    codes = packed.codes()
    if perm is not None:
        codes = codes[:, perm]
    codes = torch.nn.functional.pad(codes, (0, kp - k))  # zero codes meet zero activations
    scales = packed.scales.float()
    g = scales.shape[1]
    gsb = kp // BLOCK if packed.group_size == -1 else packed.group_size // BLOCK
    lut = None
    if fmt.bits == 8:
        layout = LAYOUT_BYTES
        qweight = (codes.to(torch.int16) - 128).to(torch.int8).view(torch.uint8).contiguous()
        shift = 128.0  # stored v = u - 128, so w = v * s + (128 - z) * s
    elif fmt.bits <= 4:
        layout = LAYOUT_NIBBLES
        blocks = codes.reshape(n, kp // BLOCK, BLOCK)
        qweight = (blocks[..., :16] | (blocks[..., 16:] << 4)).reshape(n, kp // 2).contiguous()
        shift = 0.0
    else:
        raise ValueError(f"{fmt.name}: {fmt.bits}-bit codes have no CPU kernel layout")
    if fmt.is_codebook:
        lut = torch.zeros(16)
        lut[: len(fmt.levels)] = torch.tensor(fmt.levels, dtype=torch.float32)
        offs = torch.zeros_like(scales)
    elif packed.zero_mode == "min":
        offs = shift * scales + packed.zeros.float()
    else:
        z = float(fmt.sym_zero) if packed.zeros is None else packed.zeros.float()
        offs = (shift - z) * scales
    return CpuWeight(qweight, layout, k, kp, n, g, gsb, scales.contiguous(), offs.contiguous(),
                     lut, perm)

"""Checkpoint layout (``formats.pack_codes``) -> the C++ CPU kernels' layout, done once at load.

The kernels see every format as ``w = val(code) * scale + off`` per group, with
``val(code) = code`` for int formats (the zero point folds into ``off``) and
``val(code) = lut[code]`` for codebook formats (``off = 0``). See csrc/cpu_qgemm.cpp
for the byte layout; this file only reshuffles codes and precomputes ``off``.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from ..formats import pack_codes
from ..packed import PackedWeight
from ..primitives import default_g_idx

BLOCK = 32  # input columns per SIMD block; group sizes must be whole blocks
LAYOUT_NIBBLES, LAYOUT_BYTES = 0, 1


@dataclass
class CpuWeight:
    qweight: torch.Tensor  # uint8 [N, Kp/2] (nibbles, checkpoint pairing) or [N, Kp] (bytes)
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
    """Kernel tensors for ``packed``. int8 and 4-bit formats whose rows are whole blocks and
    in column order reuse the checkpoint's bytes (no copy); others are re-packed once."""
    fmt = packed.fmt
    n, k = packed.out_features, packed.in_features
    reason = group_size_reason(packed.group_size)
    if reason:
        raise ValueError(reason)
    if fmt.bits not in (2, 3, 4, 8):
        raise ValueError(f"{fmt.name}: {fmt.bits}-bit codes have no CPU kernel layout")
    kp = -(-k // BLOCK) * BLOCK
    perm = _column_order(packed)
    layout = LAYOUT_BYTES if fmt.bits == 8 else LAYOUT_NIBBLES
    if perm is None and kp == k and fmt.bits in (4, 8):
        qweight = packed.qweight.contiguous()  # the checkpoint layout is the kernel layout
    else:
        codes = packed.codes()
        if perm is not None:
            codes = codes[:, perm]
        codes = torch.nn.functional.pad(codes, (0, kp - k))  # zero codes meet zero activations
        qweight = pack_codes(codes, 8 if fmt.bits == 8 else 4)
    scales = packed.scales.float()
    g = scales.shape[1]
    gsb = kp // BLOCK if packed.group_size == -1 else packed.group_size // BLOCK
    lut = None
    if fmt.is_codebook:
        lut = torch.zeros(16)
        lut[: len(fmt.levels)] = torch.tensor(fmt.levels, dtype=torch.float32)
        offs = torch.zeros_like(scales)
    elif packed.zero_mode == "min":
        offs = packed.zeros.float().clone()
    else:
        z = float(fmt.sym_zero) if packed.zeros is None else packed.zeros.float()
        offs = -z * scales
    return CpuWeight(qweight, layout, k, kp, n, g, gsb, scales.contiguous(), offs.contiguous(), lut, perm)


def kernel_columns(x: torch.Tensor, layout: int) -> torch.Tensor:
    """Activations ``[M, Kp]`` in the order the kernel reads columns: within each 32-column
    block of the nibble layout, the even columns (low nibbles) then the odd ones."""
    if layout != LAYOUT_NIBBLES:
        return x
    m, kp = x.shape
    return x.reshape(m, kp // BLOCK, BLOCK // 2, 2).transpose(-1, -2).reshape(m, kp)


def release_freed_memory() -> None:
    """Hand the repack's freed temporaries back to the OS. Unpacking goes through int64
    tensors several times the layer's size; glibc keeps such freed heap pages resident,
    which showed up as peak RSS while decoding (measured by benchmarks/cpu_speed.py)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: nothing to trim
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None

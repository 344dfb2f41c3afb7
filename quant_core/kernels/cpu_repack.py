"""Checkpoint layout (``formats.pack_codes``) -> the C++ CPU kernels' layout, done once at load.

The kernels see every format as ``w = val(code) * scale + off`` per group, with
``val(code) = code`` for int formats (the zero point folds into ``off``) and
``val(code) = lut[code]`` for codebook formats (``off = 0``). See csrc/layer.h for the
byte layout. int4 and int8 rows whose width is whole 32-column blocks (and in column order)
are used as the checkpoint stores them: the kernels transpose tiles of rows in registers
instead of keeping an interleaved second copy, so the weight's memory is paid once. Scales
and offsets are rearranged per tile of ``rows_per_tile`` rows (one vector per group).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import torch

from ..formats import pack_codes
from ..packed import PackedWeight
from ..primitives import default_g_idx, per_channel

BLOCK = 32  # input columns per SIMD block; group sizes must be whole blocks
KIND_NIBBLES, KIND_CODEBOOK, KIND_BYTES = 0, 1, 2  # csrc/layer.h: Kind


@dataclass
class CpuWeight:
    segments: list[torch.Tensor]  # uint8 rows [n_s, Kp/2] (codes of <= 4 bits) or [n_s, Kp] (int8)
    kind: int  # KIND_*
    in_features: int
    padded_in: int  # Kp
    out_features: int  # sum of the segments' rows
    n_groups: int
    words_per_group: int  # 32-bit words (8 nibbles or 4 bytes) per group
    rows_per_tile: int
    scales: torch.Tensor  # float32 [tiles, G, rows_per_tile]
    offs: torch.Tensor  # float32 [tiles, G, rows_per_tile]
    lut: torch.Tensor | None  # float32 [16] for codebook formats
    perm: torch.Tensor | None  # int64 [K]: input column order (act-order g_idx), or None
    _args: tuple | None = field(default=None, repr=False)

    @property
    def tiles(self) -> int:
        return -(-self.out_features // self.rows_per_tile)

    def nbytes(self) -> int:
        ts = self.segments + [self.scales, self.offs] + [t for t in (self.lut, self.perm) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)

    def layer_args(self) -> tuple:
        """The ``Layer`` arguments of every C++ entry point (csrc/layer.h), built once."""
        if self._args is None:
            n = len(self.segments)
            segs = (ctypes.c_void_p * n)(*(t.data_ptr() for t in self.segments))
            ends = (ctypes.c_int * n)(*torch.tensor([t.shape[0] for t in self.segments]).cumsum(0).tolist())
            self._args = (segs, ends, n, self.kind, self.out_features, self.padded_in, self.n_groups,
                          self.words_per_group, _ptr(self.scales), _ptr(self.offs))
        return self._args

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Per-row float32 [tiles, G, R] back to [N, G]."""
        return tensor.transpose(1, 2).reshape(-1, tensor.shape[1])[: self.out_features]


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def tiled(rows: torch.Tensor, rows_per_tile: int) -> torch.Tensor:
    """[N, G] -> [ceil(N / R), G, R] float32, rows past N zero."""
    n, g = rows.shape
    tiles = -(-n // rows_per_tile)
    padded = torch.nn.functional.pad(rows.float(), (0, 0, 0, tiles * rows_per_tile - n))
    return padded.reshape(tiles, rows_per_tile, g).transpose(1, 2).contiguous()


def fusable(weights: list[CpuWeight]) -> str | None:
    """Why ``weights`` cannot be read as one weight of stacked rows, or None if they can."""
    first = weights[0]
    for w in weights[1:]:
        same = (w.kind, w.in_features, w.padded_in, w.n_groups, w.words_per_group, w.rows_per_tile) == (
            first.kind, first.in_features, first.padded_in, first.n_groups, first.words_per_group,
            first.rows_per_tile)
        if not same:
            return "formats, widths or group sizes differ"
        for a, b in ((w.lut, first.lut), (w.perm, first.perm)):
            if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
                return "codebooks or act-order column orders differ"
    return None


def stack_rows(weights: list[CpuWeight]) -> CpuWeight:
    """One weight whose rows are those of ``weights`` in order (a fused QKV or gate/up projection).
    The code bytes are not copied: each weight's rows become a segment."""
    why = fusable(weights)
    if why:
        raise ValueError(f"cannot stack these weights: {why}")
    first = weights[0]
    rt = first.rows_per_tile
    scales = tiled(torch.cat([w.rows(w.scales) for w in weights]), rt)
    offs = tiled(torch.cat([w.rows(w.offs) for w in weights]), rt)
    return CpuWeight([s for w in weights for s in w.segments], first.kind, first.in_features, first.padded_in,
                     sum(w.out_features for w in weights), first.n_groups, first.words_per_group, rt, scales, offs,
                     first.lut, first.perm)


def group_size_reason(group_size: int) -> str | None:
    if per_channel(group_size) or group_size % BLOCK == 0:
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


def repack(packed: PackedWeight, rows_per_tile: int) -> CpuWeight:
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
    bits = 8 if fmt.bits == 8 else 4
    if perm is None and kp == k and fmt.bits in (4, 8):
        qweight = packed.qweight.contiguous()  # the checkpoint layout is the kernel layout
    else:
        codes = packed.codes()
        if perm is not None:
            codes = codes[:, perm]
        codes = torch.nn.functional.pad(codes, (0, kp - k))  # zero codes meet zero activations
        qweight = pack_codes(codes, bits)
    scales = packed.scales.float()
    cols_per_word = 32 // bits
    wpg = (kp if per_channel(packed.group_size) else packed.group_size) // cols_per_word
    lut = None
    if fmt.is_codebook:
        lut = torch.zeros(16)
        lut[: len(fmt.levels)] = torch.tensor(fmt.levels, dtype=torch.float32)
        offs = torch.zeros_like(scales)
        kind = KIND_CODEBOOK
    else:
        kind = KIND_BYTES if bits == 8 else KIND_NIBBLES
        if packed.zero_mode == "min":
            offs = packed.zeros.float()
        else:
            z = float(fmt.sym_zero) if packed.zeros is None else packed.zeros.float()
            offs = -z * scales
    return CpuWeight([qweight], kind, k, kp, n, scales.shape[1], wpg, rows_per_tile, tiled(scales, rows_per_tile),
                     tiled(offs, rows_per_tile), lut, perm)


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

"""The GPU layout the Triton kernels read, made once from a ``PackedWeight``.

Our packed rows (``formats.pack_codes``) are, for 2, 4 and 8 bits, one continuous
little-endian bit stream per row, so reading a row's bytes as int32 words gives
``P = 32 // bits`` codes per word, code ``j`` of the word at bits ``[j*bits, (j+1)*bits)``.
We transpose those words to ``qweight [K/P, N]`` (GPTQ's orientation): a tile of
consecutive output channels is then one contiguous, coalesced read per word row,
and the GEMV reduces along K inside each thread.

int3 packs 8 codes into 3 bytes, which never lines up with a 32-bit word, so it
is declined here (the reference kernel runs it).

Zero points stay as compact as the checkpoint: symmetric layers read none (the
zero is a compile-time constant), integer zero points stay uint8, float group
minimums (GGUF Q4_1) stay in the scale dtype. Everything is transposed to ``[G, N]``
so group rows are read as contiguous vectors, like the codes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..packed import PackedWeight
from ..primitives import group_width

SUPPORTED_BITS = (2, 4, 8)
# zero_mode of PackedWeight -> the kernels' ZMODE constant
ZMODES = {"none": 0, "int": 1, "min": 2}


@dataclass
class TritonWeight:
    qweight: torch.Tensor  # int32 [KW, N], KW = ceil(K / P)
    scales: torch.Tensor  # [G, N] (scale dtype)
    zeros: torch.Tensor | None  # uint8 [G, N] ("int") / float [G, N] ("min") / None
    g_idx: torch.Tensor | None  # int32 [K] or None
    lut: torch.Tensor | None  # float32 [2**bits] codebook levels, or None
    bits: int
    in_features: int
    out_features: int
    group_cols: int  # columns per group; in_features rounded up for per-channel
    zmode: int
    sym_zero: int

    @property
    def codes_per_word(self) -> int:
        return 32 // self.bits

    @property
    def n_words(self) -> int:
        return self.qweight.shape[0]


def repack(packed: PackedWeight) -> TritonWeight:
    """Make the kernels' layout on the packed tensors' device (runs once per layer)."""
    bits = packed.fmt.bits
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"Triton kernels read {SUPPORTED_BITS}-bit codes, not {bits}-bit "
                         f"({packed.fmt.name}); use the reference kernel for it")
    n, k = packed.out_features, packed.in_features
    rows = packed.qweight.contiguous()
    pad = (-rows.shape[1]) % 4  # int2 rows can end on a half word
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    words = rows.view(torch.int32)  # little-endian bytes -> words, code j at bit j*bits
    group_cols = group_width(k, packed.group_size)
    lut = packed.fmt.codebook(torch.float32, rows.device) if packed.fmt.is_codebook else None
    return TritonWeight(
        qweight=words.t().contiguous(),
        scales=packed.scales.t().contiguous(),
        zeros=None if packed.zeros is None else packed.zeros.t().contiguous(),
        g_idx=None if packed.g_idx is None else packed.g_idx.to(torch.int32).contiguous(),
        lut=lut, bits=bits, in_features=k, out_features=n, group_cols=group_cols,
        zmode=ZMODES[packed.zero_mode], sym_zero=packed.fmt.sym_zero,
    )

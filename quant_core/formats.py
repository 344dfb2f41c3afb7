"""Weight formats described as data, and the one packed layout they all share.

A format says how a group of float weights maps to small unsigned codes:

* ``int`` formats: ``w = (u - z) * s`` with ``u`` in ``[0, 2**bits)``. Symmetric
  quantization fixes ``z = 2**(bits-1)`` (so the signed code is ``u - z`` in
  ``[qmin, qmax]``); asymmetric quantization stores ``z`` per group.
* ``codebook`` formats: ``w = codebook[u] * s``; always symmetric.

Packed layout (``pack_codes``), the same for every format and kernel-independent:
codes are laid out row-major as ``[out_features, in_features]``; along each row,
every 8 consecutive codes occupy ``bits`` bytes, little-endian, code ``i`` of the
8 at bit offset ``i * bits``. So int4 puts code ``2j`` in the low nibble of byte
``j``, int8 is one code per byte, int3 packs 8 codes into 3 bytes and int2 packs
4 codes per byte. Rows are padded with zero codes up to a multiple of 8.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# QLoRA's NormalFloat-4 levels (Dettmers et al. 2023), in code order.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230611801147, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
# FP4 E2M1: code = sign << 3 | exponent << 1 | mantissa (the OCP MX encoding).
_E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
FP4_E2M1_LEVELS = _E2M1_MAGNITUDES + tuple(-m for m in _E2M1_MAGNITUDES)


@dataclass(frozen=True)
class WeightFormat:
    name: str
    bits: int
    kind: str  # "int" or "codebook"
    qmin: int = 0  # signed range of a symmetric int code
    qmax: int = 0
    levels: tuple[float, ...] | None = None
    description: str = ""

    @property
    def is_codebook(self) -> bool:
        return self.kind == "codebook"

    @property
    def sym_zero(self) -> int:
        """The fixed zero point of symmetric int codes (unsigned code of 0.0)."""
        return 1 << (self.bits - 1)

    @property
    def max_code(self) -> int:
        return (1 << self.bits) - 1

    def codebook(self, dtype=torch.float32, device=None) -> torch.Tensor:
        return torch.tensor(self.levels, dtype=dtype, device=device)

    def packed_row_bytes(self, in_features: int) -> int:
        return (in_features + 7) // 8 * self.bits


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("int8", 8, "int", -128, 127, description="8-bit integer"),
    WeightFormat("int4_clip", 4, "int", -7, 7, description="4-bit integer, symmetric range [-7, 7]"),
    WeightFormat("int4_fullrange", 4, "int", -8, 7, description="4-bit integer, full range [-8, 7]"),
    WeightFormat("int3", 3, "int", -4, 3, description="3-bit integer, [-4, 3]"),
    WeightFormat("int2", 2, "int", -2, 1, description="2-bit integer, [-2, 1]"),
    WeightFormat("nf4", 4, "codebook", levels=NF4_LEVELS, description="4-bit NormalFloat (QLoRA)"),
    WeightFormat("fp4_e2m1", 4, "codebook", levels=FP4_E2M1_LEVELS, description="4-bit float E2M1"),
)}

# Names users already write (Intel's WeightOnlyQuantConfig, bitsandbytes).
ALIASES = {"int4": "int4_fullrange", "fp4": "fp4_e2m1", "fp4_e2m1_bnb": "fp4_e2m1"}


def get_format(name: str) -> WeightFormat:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in FORMATS:
        valid = ", ".join(list(FORMATS) + list(ALIASES))
        raise ValueError(f"unknown weight dtype {name!r}; valid choices: {valid}")
    return FORMATS[key]


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes ``[N, K]`` -> packed uint8 ``[N, ceil(K/8) * bits]`` (layout above)."""
    n, k = codes.shape
    pad = (-k) % 8
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    if bits == 8:
        return codes.to(torch.uint8).contiguous()
    if 8 % bits == 0:  # whole codes per byte: byte j holds codes j * per, ... in rising bits (as below), in uint8
        per = 8 // bits
        parts = codes.to(torch.uint8).reshape(n, -1, per)
        out = parts[..., 0].clone()
        for i in range(1, per):
            out |= parts[..., i] << (i * bits)
        return out
    blocks = codes.reshape(n, -1, 8).to(torch.int64)
    shifts = torch.arange(8, device=codes.device, dtype=torch.int64) * bits
    word = (blocks << shifts).sum(-1, keepdim=True)  # 8 * bits <= 32 bits: fits
    byte_shifts = torch.arange(bits, device=codes.device, dtype=torch.int64) * 8
    return ((word >> byte_shifts) & 0xFF).to(torch.uint8).reshape(n, -1)


def unpack_codes(packed: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: packed uint8 ``[N, B]`` -> uint8 codes ``[N, in_features]``."""
    n = packed.shape[0]
    if bits == 8:
        return packed[:, :in_features]
    if 8 % bits == 0:  # whole codes per byte: shift bytes directly (the hot path of the reference kernel)
        shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.uint8)
        codes = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
        return codes.reshape(n, -1)[:, :in_features]
    chunks = packed.reshape(n, -1, bits).to(torch.int64)
    byte_shifts = torch.arange(bits, device=packed.device, dtype=torch.int64) * 8
    word = (chunks << byte_shifts).sum(-1, keepdim=True)
    shifts = torch.arange(8, device=packed.device, dtype=torch.int64) * bits
    codes = (word >> shifts) & ((1 << bits) - 1)
    return codes.reshape(n, -1)[:, :in_features].to(torch.uint8)

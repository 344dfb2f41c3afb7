"""The register-lookup PTX for 4-bit codebooks, run by a small interpreter of its instructions.

The GPU runs this asm inside the Triton kernels (tests/quant_core/kernels/test_triton_kernel.py
checks them against the reference on a GPU); here its logic is checked on CPU: every code
in every position of a word must give its level's exact fp32 bits.
"""
from __future__ import annotations

import random
import re
import struct

import pytest

from quant_core.formats import FP4_E2M1_LEVELS, NF4_LEVELS
from quant_core.kernels.triton_codebook import codebook_ptx

MASK32 = 0xFFFFFFFF


def prmt(a: int, b: int, c: int) -> int:
    """PTX prmt.b32 (default mode): byte i of the result from selector nibble i of ``c``."""
    pool = (a | b << 32).to_bytes(8, "little")
    out = 0
    for i in range(4):
        nib = (c >> 4 * i) & 0xF
        byte = pool[nib & 7]
        if nib & 8:  # sign-replicate the selected byte's top bit
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << 8 * i
    return out


OPS = {
    "mov.b32": lambda a: a,
    "not.b32": lambda a: ~a & MASK32,
    "and.b32": lambda a, b: a & b,
    "or.b32": lambda a, b: a | b,
    "xor.b32": lambda a, b: a ^ b,
    "shr.b32": lambda a, b: a >> b,
    "prmt.b32": prmt,
}


def run_ptx(asm: str, word: int) -> list[int]:
    regs = {"$8": word}
    value = lambda tok: int(tok, 0) if re.match(r"^(0x[0-9a-f]+|\d+)$", tok) else regs[tok]  # noqa: E731
    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if line in ("{", "}") or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        dst, *srcs = [t.strip() for t in rest.split(",")]
        regs[dst] = OPS[op](*map(value, srcs)) & MASK32
    return [regs[f"${i}"] for i in range(8)]


@pytest.mark.parametrize("levels", [NF4_LEVELS, FP4_E2M1_LEVELS], ids=["nf4", "fp4_e2m1"])
def test_every_code_in_every_position(levels):
    asm = codebook_ptx(levels)
    bits = [struct.unpack("<I", struct.pack("<f", v))[0] for v in levels]
    rng = random.Random(0)
    words = [sum(c << 4 * j for j, c in enumerate(rng.choices(range(16), k=8))) for _ in range(300)]
    words += [sum(c << 4 * j for j in range(8)) for c in range(16)]  # each code in all 8 slots
    for word in words:
        codes = [(word >> 4 * j) & 15 for j in range(8)]
        assert run_ptx(asm, word) == [bits[c] for c in codes], f"word {word:#010x}"


def test_declines_other_sizes():
    with pytest.raises(ValueError, match="16-level"):
        codebook_ptx([0.0, 1.0])

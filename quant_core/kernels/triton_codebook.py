"""4-bit codebook lookups in registers: eight fp32 levels from one int32 word with byte permutes.

A codebook format (nf4, fp4_e2m1) needs ``levels[u]`` for every code. Read from a
table in memory, that is one load per code, which costs the GEMV more than the rest
of its per-code work together. PTX's ``prmt`` picks 4 bytes out of 8 by the 4
nibbles of a selector, so one ``prmt`` is 4 lookups of a 3-bit index into an 8-byte
table. The 16 fp32 levels are 4 "byte planes" (byte b of every level); per 4 codes
and per plane, two ``prmt`` look up the low and high half of the codebook by the
codes' low 3 bits and a blend picks one by bit 3 (its mask also made by a ``prmt``,
in sign-replicate mode). Eight more ``prmt`` transpose the planes back into four
fp32 words: about 6 instructions per code, no memory access, bit-exact levels.

``codebook_ptx(levels)`` writes the asm for one codebook (a compile-time string);
``levels8`` runs it on a tensor of words and returns the 8 levels of each word's
codes, code ``j`` from bits ``[4j, 4j+4)``. Triton's interpreter cannot run inline
asm: with ``ASM == ""`` the same helpers read the table in memory instead, so the
kernels' structure around them is tested on CPU too.
"""
from __future__ import annotations

import struct

from .triton_jit import jit, tl  # triton_jit first: it decides interpreted-or-compiled before triton loads


def _plane_tables(levels) -> list[int]:
    """16 words: for plane b, words 4b..4b+3 hold byte b of levels 0-3, 4-7, 8-11, 12-15."""
    raw = [struct.pack("<f", float(v)) for v in levels]
    words = []
    for b in range(4):
        for part in range(4):
            words.append(int.from_bytes(bytes(raw[4 * part + i][b] for i in range(4)), "little"))
    return words


def _half(src: str, first_out: int) -> list[str]:
    """Four codes (the low 16 bits of register ``src``) to outputs $first_out.. $first_out+3."""
    o = first_out
    lines = [
        f"and.b32 s, {src}, 0x7777;",  # low 3 bits of each code: the byte index, sign mode off
        f"not.b32 t, {src};", "shr.b32 t, t, 3;", "and.b32 t, t, 0x1111;",
        f"and.b32 m, {src}, 0x8888;", "or.b32 m, m, t;",  # bit 3 set: sign-replicate 0x80; else copy 0x00
        "prmt.b32 m, k80, k80, m;",  # byte i = 0xFF where code i >= 8
    ]
    for b in range(4):
        lines += [f"prmt.b32 lo, tb{4 * b}, tb{4 * b + 1}, s;", f"prmt.b32 hi, tb{4 * b + 2}, tb{4 * b + 3}, s;",
                  "xor.b32 d, lo, hi;", "and.b32 d, d, m;", f"xor.b32 p{b}, lo, d;"]
    lines += ["prmt.b32 q0, p0, p1, 0x5140;", "prmt.b32 q1, p2, p3, 0x5140;",
              "prmt.b32 q2, p0, p1, 0x7362;", "prmt.b32 q3, p2, p3, 0x7362;",
              f"prmt.b32 ${o}, q0, q1, 0x5410;", f"prmt.b32 ${o + 1}, q0, q1, 0x7632;",
              f"prmt.b32 ${o + 2}, q2, q3, 0x5410;", f"prmt.b32 ${o + 3}, q2, q3, 0x7632;"]
    return lines


def codebook_ptx(levels) -> str:
    """PTX for outputs $0..$7 (fp32 bits of levels[code j]) from the int32 word in $8."""
    if len(levels) != 16:
        raise ValueError(f"register lookup is for 16-level (4-bit) codebooks, got {len(levels)} levels")
    lines = ["{", ".reg .b32 tb<16>, k80, s, t, m, lo, hi, d, p<4>, q<4>, wh;"]
    lines += [f"mov.b32 tb{i}, {w:#010x};" for i, w in enumerate(_plane_tables(levels))]
    lines += ["mov.b32 k80, 0x80;"]
    lines += _half("$8", 0)
    lines += ["shr.b32 wh, $8, 16;"] + _half("wh", 4)
    lines += ["}"]
    return "\n".join(lines)


@jit
def levels8(w, lut_ptr, ASM: tl.constexpr):
    """The fp32 levels of the 8 codes of each int32 word in ``w`` (8 tensors shaped like ``w``):
    looked up in registers by ``ASM``, or loaded from the table at ``lut_ptr`` when it is ""."""
    if ASM == "":
        return (tl.load(lut_ptr + (w & 15)), tl.load(lut_ptr + ((w >> 4) & 15)),
                tl.load(lut_ptr + ((w >> 8) & 15)), tl.load(lut_ptr + ((w >> 12) & 15)),
                tl.load(lut_ptr + ((w >> 16) & 15)), tl.load(lut_ptr + ((w >> 20) & 15)),
                tl.load(lut_ptr + ((w >> 24) & 15)), tl.load(lut_ptr + ((w >> 28) & 15)))
    v = tl.inline_asm_elementwise(ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r", [w], dtype=(tl.int32,) * 8,
                                  is_pure=True, pack=1)
    return (v[0].to(tl.float32, bitcast=True), v[1].to(tl.float32, bitcast=True),
            v[2].to(tl.float32, bitcast=True), v[3].to(tl.float32, bitcast=True),
            v[4].to(tl.float32, bitcast=True), v[5].to(tl.float32, bitcast=True),
            v[6].to(tl.float32, bitcast=True), v[7].to(tl.float32, bitcast=True))


@jit
def levels_tile(w, lut_ptr, ASM: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Levels of a ``[ROWS // 8, COLS]`` tile of words as ``[ROWS, COLS]``, row ``8 * word + j``."""
    v0, v1, v2, v3, v4, v5, v6, v7 = levels8(w, lut_ptr, ASM)
    # join stacks on a new last axis: c[word, col, a, b, c] is code 4c + 2b + a of the word
    c = tl.join(tl.join(tl.join(v0, v1), tl.join(v2, v3)), tl.join(tl.join(v4, v5), tl.join(v6, v7)))
    return tl.reshape(tl.permute(c, (0, 4, 3, 2, 1)), (ROWS, COLS))

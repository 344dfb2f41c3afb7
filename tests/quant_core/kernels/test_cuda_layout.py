"""The CUDA kernel's weight layout, on CPU: round trips are bit-exact, and the decoder's bit tricks
(``csrc/cuda_dequant.cuh``), replayed here in Python on the shuffled bytes, put every code where
``mma.sync.m16n8k16`` expects it (lane l owns k = 2(l%4) + 8r + h of column l//4 of each subtile)."""
from __future__ import annotations

import struct

import pytest
import torch

from quant_core.formats import FP4_E2M1_LEVELS, NF4_LEVELS
from quant_core.kernels.cuda_layout import (KINDS, act_order_permutation, codebook_tables, kind_bits, shuffle_codes,
                                            shuffle_groups, unshuffle_codes, unshuffle_groups)


def prmt(a: int, b: int, sel: int) -> int:
    """PTX prmt (default mode, as CUDA's __byte_perm): byte i of the result is byte sel_i & 7 of {b, a}."""
    src = (a & 0xFFFFFFFF) | (b & 0xFFFFFFFF) << 32
    return sum(((src >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))


def f16(bits: int) -> float:
    return struct.unpack("<e", struct.pack("<H", bits & 0xFFFF))[0]


def bf16(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", (bits & 0xFFFF) << 16))[0]


def f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def lookup4(x: int, lut: list[int]) -> tuple[int, int]:
    """cuda_dequant.cuh's lookup4, instruction for instruction."""
    sel = x & 0x7777
    half = ((x >> 1) & 0x4444) | 0x3210
    lo = prmt(prmt(lut[0], lut[1], sel), prmt(lut[2], lut[3], sel), half)
    hi = prmt(prmt(lut[4], lut[5], sel), prmt(lut[6], lut[7], sel), half)
    return prmt(lo, hi, 0x5140), prmt(lo, hi, 0x7362)


def decode_lane(words: list[int], kind: str, bf: bool, lut=None) -> dict:
    """{(subtile, register, half): value before zero and scale} as the device decodes one lane."""
    out, val = {}, bf16 if bf else f16
    if kind == "int4":
        for j, q in enumerate(words):
            if bf:
                for i in range(4):
                    v = ((q >> (4 * i)) & 0x000F000F) | 0x43004300
                    for h in range(2):
                        out[(2 * j + i // 2, i % 2, h)] = bf16(v >> (16 * h)) - 128
            else:
                for f, qq in ((0, q), (1, q >> 8)):
                    lo, hi = (qq & 0x000F000F) | 0x64006400, (qq & 0x00F000F0) | 0x64006400
                    for h in range(2):
                        out[(2 * j + f, 0, h)] = f16(lo >> (16 * h)) - 1024
                        out[(2 * j + f, 1, h)] = f16(hi >> (16 * h)) / 16 - 64
    elif kind == "cb4":
        for j, q in enumerate(words):
            for f, x in ((0, q & 0xFFFF), (1, q >> 16)):
                for r, reg in enumerate(lookup4(x, lut)):
                    for h in range(2):
                        out[(2 * j + f, r, h)] = val(reg >> (16 * h))
    else:
        for s, q in enumerate(words):
            if bf:
                for i in range(4):
                    out[(s, i // 2, i % 2)] = f32(prmt(q, 0x4B000000, 0x7440 | i)) - 8388608
            else:
                for r, sel in enumerate((0x4140, 0x4342)):
                    reg = prmt(q, 0x64646464, sel)
                    for h in range(2):
                        out[(s, r, h)] = f16(reg >> (16 * h)) - 1024
    return out


def decode_unit(unit: bytes, kind: str, bf: bool, lut=None) -> torch.Tensor:
    """The dense 16 x 64 tile the warp's MMA fragments hold after decoding one unit."""
    dense = torch.full((16, 64), float("nan"), dtype=torch.float64)
    for lane in range(32):
        chunks = [unit[lane * 16:lane * 16 + 16]] + ([unit[512 + lane * 16:512 + lane * 16 + 16]] if kind == "int8" else [])
        words = [int.from_bytes(c[4 * i:4 * i + 4], "little") for c in chunks for i in range(4)]
        g, t = lane // 4, lane % 4
        for (s, r, h), v in decode_lane(words, kind, bf, lut).items():
            dense[2 * t + 8 * r + h, 8 * s + g] = v
    return dense


def random_codes(kind: str, n: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1 << kind_bits(kind), (n, k), generator=gen, dtype=torch.uint8)


@pytest.mark.parametrize("kind", KINDS)
def test_shuffle_round_trip_is_bit_exact(kind):
    codes = random_codes(kind, 192, 96)
    units = shuffle_codes(codes, kind)
    assert units.shape == (96 // 16, 192 // 64, 128 * kind_bits(kind)) and units.dtype == torch.uint8
    assert torch.equal(unshuffle_codes(units, kind, 192, 96), codes)


def test_group_tensors_round_trip_and_put_a_lanes_columns_side_by_side():
    scales = torch.randn(128, 3).half()
    shuffled = shuffle_groups(scales)
    assert torch.equal(unshuffle_groups(shuffled), scales)
    for lane in (0, 5, 31):  # lane reads 8 neighbours at (lane // 4) * 8: subtile s -> column 8s + lane // 4
        for block in (0, 1):
            got = shuffled[2, block * 64 + (lane // 4) * 8:][:8]
            want = scales[[block * 64 + 8 * s + lane // 4 for s in range(8)], 2]
            assert torch.equal(got, want)


@pytest.mark.parametrize("bf", [False, True], ids=["fp16", "bf16"])
@pytest.mark.parametrize("kind", ["int4", "int8"])
def test_device_decoder_puts_every_int_code_in_its_fragment(kind, bf):
    codes = random_codes(kind, 128, 32, seed=1)
    units = shuffle_codes(codes, kind)
    for band in range(2):
        for block in range(2):
            dense = decode_unit(bytes(units[band, block].tolist()), kind, bf)
            want = codes[block * 64:(block + 1) * 64, band * 16:(band + 1) * 16].t().to(torch.float64)
            assert torch.equal(dense, want)


@pytest.mark.parametrize("bf", [False, True], ids=["fp16", "bf16"])
@pytest.mark.parametrize("levels", [NF4_LEVELS, FP4_E2M1_LEVELS], ids=["nf4", "fp4"])
def test_device_decoder_looks_up_codebook_levels(levels, bf):
    dtype = torch.bfloat16 if bf else torch.float16
    codes = random_codes("cb4", 64, 16, seed=2)
    dense = decode_unit(bytes(shuffle_codes(codes, "cb4")[0, 0].tolist()), "cb4", bf, codebook_tables(levels, dtype))
    want = torch.tensor(levels, dtype=torch.float32).to(dtype).to(torch.float64)[codes.long()].t()
    assert torch.equal(dense, want)


@pytest.mark.parametrize("bf", [False, True], ids=["fp16", "bf16"])
def test_zero_point_registers_hold_minus_magic_plus_zero(bf):
    """neg_zero<ZINT>: PRMT puts zero byte b under the magic exponent byte, the XOR flips the sign."""
    zeros = [3, 0, 15, 9, 200, 7, 1, 128]
    zr = [int.from_bytes(bytes(zeros[:4]), "little"), int.from_bytes(bytes(zeros[4:]), "little")]
    magic, base, val = (0x43434343, 128, bf16) if bf else (0x64646464, 1024, f16)
    for s, z in enumerate(zeros):
        b = s & 3
        reg = prmt(zr[s >> 2], magic, 0x4040 | (b << 8) | b) ^ 0x80008000
        if z < 128 or not bf:  # bf16 int4 zero points are < 16; int8 bf16 takes the fp32 path below
            assert val(reg) == val(reg >> 16) == -(base + z)
        assert f32(prmt(zr[s >> 2], 0xCB000000, 0x7440 | b)) == -(8388608 + z)


def test_dup_half_selectors_broadcast_one_scale():
    word = 0xABCD1234
    assert prmt(word, 0, 0x1010) == 0x12341234 and prmt(word, 0, 0x3232) == 0xABCDABCD


def test_codebook_tables_hold_each_levels_bytes():
    words = codebook_tables(NF4_LEVELS, torch.float16)
    bits = torch.tensor(NF4_LEVELS).half().view(torch.int16).tolist()
    for i, b in enumerate(bits):
        assert (words[i // 4] >> (8 * (i % 4))) & 0xFF == b & 0xFF
        assert (words[4 + i // 4] >> (8 * (i % 4))) & 0xFF == (b >> 8) & 0xFF


def test_act_order_permutation_makes_groups_contiguous():
    g_idx = torch.arange(64) // 16
    shuffled = g_idx[torch.randperm(64, generator=torch.Generator().manual_seed(3))]
    perm = act_order_permutation(shuffled, 16)
    assert torch.equal(shuffled[perm], g_idx)
    with pytest.raises(ValueError, match="groups of exactly 16"):
        act_order_permutation(torch.cat([torch.zeros(17), torch.ones(47)]).int(), 16)


def test_shapes_off_the_unit_grid_are_refused():
    with pytest.raises(ValueError, match="divisible|% 64"):
        shuffle_codes(torch.zeros(96, 32, dtype=torch.uint8), "int4")

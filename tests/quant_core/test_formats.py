import pytest
import torch

from quant_core.formats import FORMATS, get_format, pack_codes, unpack_codes


def test_table_ranges():
    assert (FORMATS["int4_clip"].qmin, FORMATS["int4_clip"].qmax) == (-7, 7)
    assert (FORMATS["int4_fullrange"].qmin, FORMATS["int4_fullrange"].qmax) == (-8, 7)
    assert FORMATS["int3"].bits == 3 and FORMATS["int2"].bits == 2 and FORMATS["int8"].bits == 8
    for name in ("nf4", "fp4_e2m1"):
        levels = FORMATS[name].levels
        assert len(levels) == 16 and 0.0 in levels


def test_aliases_and_unknown():
    assert get_format("int4").name == "int4_fullrange"
    assert get_format("FP4").name == "fp4_e2m1"
    with pytest.raises(ValueError, match="valid choices: int8"):
        get_format("int5")


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("k", [1, 7, 8, 13, 64, 576, 1000])
def test_pack_round_trip_bit_exact(bits, k):
    g = torch.Generator().manual_seed(k * bits)
    codes = torch.randint(0, 2 ** bits, (5, k), dtype=torch.uint8, generator=g)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (k + 7) // 8 * bits)
    assert torch.equal(unpack_codes(packed, bits, k), codes)


def test_int4_layout_low_nibble_first():
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]], dtype=torch.uint8)
    assert pack_codes(codes, 4).tolist() == [[0x21, 0x43, 0x65, 0xF7]]


def test_int3_layout_little_endian_24_bits():
    codes = torch.tensor([[7, 0, 0, 0, 0, 0, 0, 5]], dtype=torch.uint8)
    # code 0 in bits 0-2, code 7 in bits 21-23: 0b101 << 21 = 0xA00000
    assert pack_codes(codes, 3).tolist() == [[0x07, 0x00, 0xA0]]


def test_packed_bytes_hold_codes_in_rising_bits():
    """The layout both packing paths write: byte j of 4-bit codes is codes[2j] | codes[2j + 1] << 4."""
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9]], dtype=torch.uint8)
    assert pack_codes(codes, 4).tolist() == [[0x21, 0x43, 0x65, 0x87, 0x09, 0, 0, 0]]
    assert pack_codes(codes[:, :4] % 4, 2).tolist() == [[1 | 2 << 2 | 3 << 4 | 0 << 6, 0]]

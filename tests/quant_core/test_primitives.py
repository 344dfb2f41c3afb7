import pytest
import torch

from quant_core.formats import FORMATS, get_format
from quant_core.packed import PackedWeight
from quant_core.primitives import (default_g_idx, dequantize_groups, dequantize_weight, grouped, quantize_groups,
                                   quantize_weight, round_trip_groups, stored_qparams)

CASES = [(name, sym) for name, f in FORMATS.items() for sym in (True, False) if sym or not f.is_codebook]


@pytest.mark.parametrize("name,sym", CASES)
@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_requantizing_dequantized_weight_is_exact(name, sym, group_size):
    """Dequantized values are fixed points of quantization: codes survive a second pass unchanged."""
    fmt = get_format(name)
    w = torch.randn(6, 200, generator=torch.Generator().manual_seed(1))  # 200 = partial last group
    codes, scale, zero = quantize_weight(w, fmt, group_size, sym)
    g_idx = default_g_idx(200, group_size)
    deq = dequantize_weight(codes, scale, zero, fmt, g_idx)
    codes2, _, _ = quantize_weight(deq, fmt, group_size, sym)
    deq2 = dequantize_weight(codes2, scale, zero, fmt, g_idx)
    assert torch.equal(deq, deq2)


def test_fullrange_sym_uses_minus_eight():
    w = torch.tensor([[-8.0, 1.0, 7.0, 0.0] * 8])
    codes, scale, _ = quantize_weight(w, get_format("int4_fullrange"), 32, True)
    assert scale.item() == pytest.approx(1.0)
    assert codes.min().item() == 0 and codes.max().item() == 15


@pytest.mark.parametrize("name", ["int4_fullrange", "int3", "int2"])
def test_asym_error_below_range(name):
    fmt = get_format(name)
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(2)) + 0.5
    for sym in (True, False):
        codes, s, z = quantize_weight(w, fmt, 64, sym)
        deq = dequantize_weight(codes, s, z, fmt, default_g_idx(256, 64))
        step = s.abs().repeat_interleave(64, dim=1)
        assert ((deq - w).abs() <= step * (1 if sym else 0.5) + 1e-6).float().mean() > 0.99


def test_mse_clip_never_worse():
    fmt = get_format("int4_fullrange")
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(3))
    g = default_g_idx(256, 128)
    errs = []
    for clip in (False, True):
        c, s, z = quantize_weight(w, fmt, 128, True, mse_clip=clip)
        errs.append((dequantize_weight(c, s, z, fmt, g) - w).pow(2).sum().item())
    assert errs[1] <= errs[0]


def test_nf4_picks_nearest_level():
    fmt = get_format("nf4")
    levels = fmt.codebook()
    w = torch.tensor([[1.0, -1.0, 0.0, 0.5, -0.3, 0.08, 0.9, -0.6]])
    codes, scale, _ = quantize_weight(w, fmt, -1, True)
    deq = levels[codes.long()] * scale
    best = (w.unsqueeze(-1) - levels * scale).abs().min(-1).values
    assert torch.allclose((deq - w).abs(), best)


def test_scales_rounded_before_codes():
    fmt = get_format("int4_fullrange")
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(4))
    codes, scale, _ = quantize_weight(w, fmt, 32, True, scale_dtype=torch.float16)
    assert torch.equal(scale, scale.half().float())


def test_packed_weight_dequantize_matches_primitives():
    fmt = get_format("int3")
    w = torch.randn(5, 100)
    codes, s, z = quantize_weight(w, fmt, 32, False)
    packed = PackedWeight.from_codes(codes, s, z, fmt, 32, scale_dtype=torch.float32)
    assert torch.equal(packed.codes(), codes)
    assert torch.equal(packed.dequantize(), dequantize_weight(codes, s, z, fmt, default_g_idx(100, 32)))
    assert packed.zero_mode == "int" and packed.n_groups == 4


def test_fullrange_sym_scale_is_signed_so_the_largest_magnitude_lands_on_qmin():
    fmt = get_format("int4_fullrange")
    w = torch.tensor([[7.9, -1.0, 3.0, 0.0] * 8, [-7.9, 1.0, 3.0, 0.0] * 8])
    codes, scale, _ = quantize_weight(w, fmt, 32, True)
    assert scale[0, 0].item() < 0 < scale[1, 0].item()
    assert codes[0, 0].item() == 0 and codes[1, 0].item() == 0  # both extremes on code 0 (= -8)
    deq = dequantize_weight(codes, scale, None, fmt, default_g_idx(32, 32))
    assert (deq - w).abs().max().item() <= 7.9 / 8 / 2 + 1e-6  # nothing clipped here: half a step


def test_symmetric_grid_keeps_positive_scales():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(5))
    _, scale, _ = quantize_weight(w, get_format("int4_clip"), 32, True)
    assert (scale > 0).all()


@pytest.mark.parametrize("name,sym", CASES)
def test_round_trip_is_quantize_then_dequantize_bit_for_bit(name, sym):
    """round_trip_groups' in-place path (int formats) is a reorganisation of the two calls, not a change."""
    fmt = get_format(name)
    w = torch.randn(64, 200, generator=torch.Generator().manual_seed(3)) * 0.05
    w[0] = 0  # an all-zero group: the smallest scale
    w[1, :7] = 0
    groups = grouped(w, 32)
    scale, zero = stored_qparams(groups, fmt, sym, torch.float16, shrink=0.8)
    expected = dequantize_groups(quantize_groups(groups, scale, zero, fmt), scale, zero, fmt)
    assert torch.equal(round_trip_groups(groups, scale, zero, fmt), expected)

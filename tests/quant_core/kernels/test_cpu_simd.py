"""The C++ CPU kernels against the reference kernel, for every format and compute dtype they accept.

Tolerances (relative to the largest output magnitude): fp32 and int8 compute do the
reference's arithmetic in another order, so 1e-4 (int formats' fp32 compute runs on int16
activations per 32-column block: measured 2.5e-5 on these shapes); bf16/fp16 compute: the
reference multiplies in 16-bit floats while the kernels accumulate in fp32, so 2e-2.
"""
from __future__ import annotations

import pytest
import torch

from quant_core import cpu_features
from quant_core.formats import get_format
from quant_core.kernels.base import LayerSpec
from quant_core.kernels.cpu_simd import CpuAvx2Kernel, CpuAvx512Kernel
from quant_core.kernels.reference import ReferenceKernel
from quant_core.packed import PackedWeight
from quant_core.primitives import quantize_weight

TOL = {"fp32": 1e-4, "int8": 1e-4, "bf16": 2e-2, "fp16": 2e-2}


class Avx512WithoutVnni(CpuAvx512Kernel):
    """The AVX-512 build for CPUs without VNNI (maddubs dot products), runnable on any AVX-512 CPU."""

    @classmethod
    def variant(cls) -> str:
        return "avx512"


NO_AVX512 = pytest.mark.skipif(not cpu_features.at_least("avx512", cpu_features.detected_isa()),
                               reason="CPU has no AVX-512")
KERNELS = [
    pytest.param(CpuAvx2Kernel, id="avx2"),
    pytest.param(CpuAvx512Kernel, id="avx512", marks=NO_AVX512),
    pytest.param(Avx512WithoutVnni, id="avx512-novnni", marks=NO_AVX512),
]
if not cpu_features.at_least("avx2", cpu_features.detected_isa()):
    pytest.skip("CPU has no AVX2+FMA: the C++ kernels never run here", allow_module_level=True)

# (weight dtype, group size, sym): every format, group sizes 32..256, per-channel, asym.
CASES = [
    ("int4", 32, True), ("int4", 64, False), ("int4", 128, True), ("int4", 256, False), ("int4", -1, True),
    ("int4_clip", 128, True), ("int8", -1, True), ("int8", -1, False), ("int8", 128, True),
    ("nf4", 64, True), ("fp4", 32, True), ("int3", 64, True), ("int2", 32, False),
]
# (N, K): odd N; K not a multiple of 32 (padding) and with a partial last group.
SHAPES = [(37, 100), (16, 320)]


def packed_weight(n, k, fmt_name, group_size, sym, seed=0, zero_mode="int"):
    gen = torch.Generator().manual_seed(seed)
    fmt = get_format(fmt_name)
    w = torch.randn(n, k, generator=gen)
    codes, scales, zeros = quantize_weight(w, fmt, group_size, sym, scale_dtype=torch.float16)
    packed = PackedWeight.from_codes(codes, scales, zeros, fmt, group_size)
    if zero_mode == "min":  # GGUF Q4_1 style: float group minimums instead of zero codes
        packed.zeros = (-packed.zeros.float() * packed.scales.float()).to(torch.float16)
    return packed


def check(kernel_cls, packed, compute, m, seed=1):
    spec = LayerSpec.of(packed, compute, "cpu")
    ok, reason = kernel_cls.can_implement(spec)
    assert ok, reason
    x = torch.randn(m, packed.in_features, generator=torch.Generator().manual_seed(seed))
    want = ReferenceKernel(packed, spec).forward(x).float()
    got = kernel_cls(packed, spec).forward(x).float()
    assert got.shape == want.shape
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= TOL[compute], f"relative error {err:.2e} > {TOL[compute]}"


@pytest.mark.parametrize("kernel_cls", KERNELS)
@pytest.mark.parametrize("fmt_name,group_size,sym", CASES)
@pytest.mark.parametrize("n,k", SHAPES)
def test_fp32_matches_reference(kernel_cls, fmt_name, group_size, sym, n, k):
    packed = packed_weight(n, k, fmt_name, group_size, sym)
    for m in (1, 3, 6, 11):  # one row; blocks of 4 rows per pass (8: AVX-512's int16 path), partial ones
        check(kernel_cls, packed, "fp32", m)


@pytest.mark.parametrize("kernel_cls", KERNELS)
@pytest.mark.parametrize("fmt_name,group_size,sym", [c for c in CASES if c[0] not in ("nf4", "fp4")])
def test_int8_compute_matches_reference(kernel_cls, fmt_name, group_size, sym):
    packed = packed_weight(37, 100, fmt_name, group_size, sym)
    for m in (1, 5):
        check(kernel_cls, packed, "int8", m)


@pytest.mark.parametrize("kernel_cls", KERNELS)
@pytest.mark.parametrize("compute", ["bf16", "fp16"])
def test_half_compute_matches_reference(kernel_cls, compute):
    for fmt_name, gs, sym in [("int4", 128, False), ("int8", -1, True), ("nf4", 64, True)]:
        check(kernel_cls, packed_weight(16, 320, fmt_name, gs, sym), compute, 2)


@pytest.mark.parametrize("kernel_cls", KERNELS)
@pytest.mark.parametrize("fmt_name,group_size,sym", CASES)
def test_gemm_path_for_large_batches(kernel_cls, fmt_name, group_size, sym):
    """The blocked GEMM (csrc/qgemm.cpp): 600 columns are three 256-column chunks (the last partial,
    padded from 600 to 608), 150 rows are several panels and a partial one, 41 activation rows
    several row blocks and a partial one."""
    packed = packed_weight(150, 600, fmt_name, group_size, sym)
    assert kernel_cls(packed, LayerSpec.of(packed, "fp32", "cpu")).gemm_rows <= 41  # the GEMM runs, not the GEMV
    check(kernel_cls, packed, "fp32", 41)
    small = packed_weight(37, 100, fmt_name, group_size, sym)
    check(kernel_cls, small, "fp32", kernel_cls(small, LayerSpec.of(small, "fp32", "cpu")).gemm_rows)


@pytest.mark.parametrize("kernel_cls", KERNELS)
def test_gemm_adds_bias_and_accumulates_into_strided_rows(kernel_cls):
    """As the lean step calls it: out rows strided, a bias padded to whole tiles, += into out."""
    packed = packed_weight(70, 300, "int4", 64, False)
    kernel = kernel_cls(packed, LayerSpec.of(packed, "fp32", "cpu"))
    x = torch.randn(kernel.gemm_rows + 1, 300, generator=torch.Generator().manual_seed(2))
    bias = torch.randn(70, generator=torch.Generator().manual_seed(3))
    want = ReferenceKernel(packed, LayerSpec.of(packed, "fp32", "cpu")).forward(x).float() + bias
    base = torch.randn(x.shape[0], 90, generator=torch.Generator().manual_seed(4))
    out = base.clone()
    kernel.gemm(kernel.activations(x), out[:, 5:75], kernel.padded_bias(bias), accumulate=True)
    tol = 1e-4 * want.abs().max().item()
    assert torch.allclose(out[:, 5:75] - base[:, 5:75], want, atol=tol)
    assert torch.equal(out[:, :5], base[:, :5]) and torch.equal(out[:, 75:], base[:, 75:])  # nothing else written


@pytest.mark.parametrize("kernel_cls", KERNELS)
def test_float_minimum_zero_points(kernel_cls):
    packed = packed_weight(37, 100, "int4", 32, False, zero_mode="min")
    assert packed.zero_mode == "min"
    check(kernel_cls, packed, "fp32", 1)
    check(kernel_cls, packed, "int8", 3)


@pytest.mark.parametrize("kernel_cls", KERNELS)
def test_act_order_g_idx(kernel_cls):
    packed = packed_weight(16, 320, "int4", 64, True)
    perm = torch.randperm(320, generator=torch.Generator().manual_seed(3))
    # Column k of the permuted weight belongs to the group of its original column.
    packed.qweight = PackedWeight.from_codes(packed.codes()[:, perm], packed.scales, None,
                                             packed.fmt, 64).qweight
    packed.g_idx = (perm // 64).to(torch.int32)
    check(kernel_cls, packed, "fp32", 2)


@pytest.mark.parametrize("kernel_cls", KERNELS)
def test_batched_3d_input_and_bf16_activations(kernel_cls):
    packed = packed_weight(16, 320, "int4", 128, True)
    spec = LayerSpec.of(packed, "fp32", "cpu")
    x = torch.randn(2, 3, 320).bfloat16()
    want = ReferenceKernel(packed, spec).forward(x.float())
    got = kernel_cls(packed, spec).forward(x)
    assert got.shape == (2, 3, 16)
    assert torch.allclose(got, want, atol=1e-3 * want.abs().max().item())


def test_rejections_say_why():
    base = LayerSpec("int4_fullrange", 4, 128, 256, 64, True, False, "none", "fp32", "cpu")
    assert CpuAvx2Kernel.can_implement(base)[0]
    for spec, words in [
        (base.__class__(**{**base.__dict__, "group_size": 48}), "multiple of 32"),
        (base.__class__(**{**base.__dict__, "device_type": "cuda"}), "CPU only"),
        (base.__class__(**{**base.__dict__, "weight_dtype": "nf4", "compute_dtype": "int8"}), "int format"),
    ]:
        ok, reason = CpuAvx2Kernel.can_implement(spec)
        assert not ok and words in reason


@pytest.mark.skipif(not cpu_features.native_bf16(), reason="CPU has no bf16 units (AVX512-BF16/AMX)")
@pytest.mark.parametrize("fmt_name,group_size,sym", [("int4", 128, True), ("nf4", 64, True), ("int8", -1, False)])
def test_bf16_batches_use_a_bf16_gemm_within_bf16_tolerance(fmt_name, group_size, sym):
    packed = packed_weight(40, 320, fmt_name, group_size, sym)
    kernel = CpuAvx2Kernel(packed, LayerSpec.of(packed, "bf16", "cpu"))
    assert kernel.bf16_gemm
    assert kernel.gemm_rows <= 40
    check(CpuAvx2Kernel, packed, "bf16", 40)  # the GEMM of the AVX2 build: bf16 rows widened to fp32


@pytest.mark.skipif(not cpu_features.native_bf16(), reason="CPU has no bf16 units (AVX512-BF16/AMX)")
@pytest.mark.parametrize("fmt_name,group_size,sym", [("int4", 128, True), ("nf4", 64, True), ("int8", -1, False),
                                                     ("int4", 32, False)])
def test_bf16_gemm_on_bf16_units(fmt_name, group_size, sym):
    """AVX-512 build: bf16 pairs of the dequantized weight (rounded as torch rounds) through vdpbf16ps,
    against the reference on the same bf16-rounded weight and activations multiplied in fp32 (the
    bf16 units sum products exactly in fp32 but for order): 1e-4, not the 2e-2 of 16-bit arithmetic."""
    packed = packed_weight(150, 600, fmt_name, group_size, sym)
    kernel = CpuAvx512Kernel(packed, LayerSpec.of(packed, "bf16", "cpu"))
    assert kernel.gemm_rows <= 41
    x = torch.randn(41, 600, generator=torch.Generator().manual_seed(1)).bfloat16()
    w = CpuAvx512Kernel(packed, LayerSpec.of(packed, "fp32", "cpu")).dequantize()[:, :600].bfloat16().float()
    want = x.float() @ w.t()
    got = kernel.gemm(kernel.activations(x), torch.empty(41, 150))
    assert torch.equal(kernel.forward(x), got.bfloat16())  # a bf16 batch's output: the same sums, rounded once
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= 1e-4, f"relative error {err:.2e}"


def test_quantlinear_cast_to_bf16_keeps_stored_tensors():
    from quant_core.modules import QuantLinear

    packed = packed_weight(16, 64, "int4", 32, False)
    layer = QuantLinear.from_packed(packed, None)
    scales = layer.scales.clone()
    layer.to(torch.bfloat16)
    assert layer.scales.dtype == scales.dtype and torch.equal(layer.scales, scales)
    assert layer.qweight.dtype == torch.uint8
    x = torch.randn(3, 64).bfloat16()
    assert layer(x).dtype == torch.bfloat16
    expected = "bf16" if cpu_features.native_bf16() else "fp32"
    assert layer.resolved_compute_dtype("cpu", torch.bfloat16) == expected


@pytest.mark.parametrize("fmt_name,group_size,sym", [("int4", 32, False), ("nf4", 64, True), ("int8", -1, True)])
def test_bf16_dequantize_is_the_fp32_one_rounded(fmt_name, group_size, sym):
    packed = packed_weight(37, 100, fmt_name, group_size, sym)
    kernel = CpuAvx2Kernel(packed, LayerSpec.of(packed, "fp32", "cpu"))
    f32 = kernel.dequantize()
    bf = kernel.dequantize(torch.bfloat16)
    assert torch.equal(bf, f32.to(torch.bfloat16))  # round to nearest even, bit for bit


@pytest.mark.parametrize("kernel_cls", KERNELS)
def test_paths_of_int_formats_float_compute(kernel_cls, monkeypatch):
    """int16 activations (the default) and the float FMA path ($QUANTLLM_CPU_FP32_PATH=fma)."""
    from quant_core.kernels import cpu_simd
    for path in ("int16", "fma"):
        monkeypatch.setattr(cpu_simd, "FP32_PATH", path)
        for fmt_name, gs, sym in [("int4", 64, False), ("int8", -1, True), ("int2", 32, True)]:
            packed = packed_weight(37, 100, fmt_name, gs, sym)
            assert kernel_cls(packed, LayerSpec.of(packed, "fp32", "cpu")).path == path
            for m in (1, 5):
                check(kernel_cls, packed, "fp32", m)
    nf4 = packed_weight(16, 64, "nf4", 64, True)
    monkeypatch.setattr(cpu_simd, "FP32_PATH", "int16")
    assert kernel_cls(nf4, LayerSpec.of(nf4, "fp32", "cpu")).path == kernel_cls.codebook_path


@pytest.mark.parametrize("kernel_cls", KERNELS)
@pytest.mark.parametrize("fmt_name,group_size", [("nf4", 64), ("nf4", -1), ("fp4", 32)])
def test_codebook_levels_as_int16_match_reference(kernel_cls, fmt_name, group_size):
    """Codebook levels looked up as int16 (csrc/qgemv16_lut.cpp: AVX2's default for nf4/fp4 float
    compute), forced on every build: nf4's rounded levels measured up to 5.6e-5, within 1e-4."""
    for n, k in SHAPES + [(300, 1024)]:
        packed = packed_weight(n, k, fmt_name, group_size, True)
        spec = LayerSpec.of(packed, "fp32", "cpu")
        kernel = kernel_cls(packed, spec)
        kernel.path = "int16"
        for m in (1, 2, 3, 5, 11):  # one row; passes of 2 (AVX2) or 4 (AVX-512) rows, partial ones
            x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
            want = ReferenceKernel(packed, spec).forward(x)
            got = kernel.forward(x)
            err = ((got - want).abs().max() / want.abs().max()).item()
            assert err <= TOL["fp32"], f"m={m} {n}x{k}: relative error {err:.2e}"


@pytest.mark.parametrize("kernel_cls", KERNELS)
@pytest.mark.parametrize("code_byte,sign", [(0xFF, 1.0), (0x00, 1.0), (0xF0, -1.0)])
def test_codebook_int16_extremes_do_not_overflow(kernel_cls, code_byte, sign):
    """Every code at the largest |level| and every activation at its block's largest: each pmaddwd
    lane is 2 * 32767^2, the most an int32 holds before the kernel converts it."""
    fmt = get_format("nf4")
    n, k = 16, 256
    qweight = torch.full((n, fmt.packed_row_bytes(k)), code_byte, dtype=torch.uint8)
    packed = PackedWeight(fmt, k, n, 64, qweight, torch.full((n, 4), 0.5, dtype=torch.float16), None)
    spec = LayerSpec.of(packed, "fp32", "cpu")
    kernel = kernel_cls(packed, spec)
    kernel.path = "int16"
    x = torch.full((1, k), sign * 3.0)
    x[:, 1::2] *= -1 if code_byte == 0xF0 else 1  # 0xF0: levels -1, +1 alternate; so do the activations
    want = ReferenceKernel(packed, spec).forward(x)
    got = kernel.forward(x)
    assert want.abs().min() > 300  # all products of one sign: 256 * 3 * 0.5
    assert torch.allclose(got, want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("kernel_cls", KERNELS)
@pytest.mark.parametrize("fmt_name,group_size,sym,k", [
    ("int4", 128, True, 2048), ("int4", 64, False, 320), ("int4", -1, True, 100), ("int2", 256, False, 576),
    ("int8", -1, False, 300), ("int8", 128, True, 1024),
    ("int4", 32, True, 320), ("int4", 64, True, 96)])  # the last two: AVX2's row kernel does not take them
def test_one_row_with_bias_and_accumulate(kernel_cls, fmt_name, group_size, sym, k):
    """M = 1 (decode; AVX2 int formats: csrc/qgemv16_rows.cpp, int4 where groups and Kp are whole
    64-column chunks, int8 always) as the lean step calls it: a strided out row, a padded bias, += into out; partial last tile."""
    packed = packed_weight(70, k, fmt_name, group_size, sym)
    kernel = kernel_cls(packed, LayerSpec.of(packed, "fp32", "cpu"))
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(2))
    bias = torch.randn(70, generator=torch.Generator().manual_seed(3))
    want = ReferenceKernel(packed, LayerSpec.of(packed, "fp32", "cpu")).forward(x).float() + bias
    base = torch.randn(1, 90, generator=torch.Generator().manual_seed(4))
    out = base.clone()
    kernel.gemv(kernel.activations(x), out[:, 5:75], kernel.padded_bias(bias), accumulate=True)
    assert torch.allclose(out[:, 5:75] - base[:, 5:75], want, atol=TOL["fp32"] * want.abs().max().item())
    assert torch.equal(out[:, :5], base[:, :5]) and torch.equal(out[:, 75:], base[:, 75:])  # nothing else written

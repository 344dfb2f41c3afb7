"""The kernels' prompt path (csrc/qgemv8.cpp): int8 activations per 32-column block.

Against a plain reference of the same numerics (activations quantized per block in PyTorch, then
the dequantized weight's matmul): 1e-4 of the largest output, as the other kernels' reordered
arithmetic. Against the fp32 reference it is an approximation: its error is bounded here and its
perplexity cost measured in benchmarks/results/cpu_speed.md.
"""
from __future__ import annotations

import pytest
import torch
from test_cpu_simd import KERNELS, packed_weight  # pytest puts this directory on sys.path

from quant_core.kernels import cpu_simd
from quant_core.kernels.base import LayerSpec
from quant_core.kernels.reference import ReferenceKernel

# int formats of every code width, group sizes 32..128 and per-channel, sym and asym
CASES = [("int4", 32, True), ("int4", 128, False), ("int4", -1, True), ("int8", -1, False), ("int8", 128, True),
         ("int3", 64, True), ("int2", 32, False)]


@pytest.fixture(autouse=True)
def q8_everywhere(monkeypatch):
    """The int8-block prompt path on every build (the default "auto" takes it on AVX-512 VNNI builds only)."""
    monkeypatch.setattr(cpu_simd, "PROMPT_PATH", "q8")


def test_auto_takes_the_int8_gemm_on_vnni_builds_only(monkeypatch):
    monkeypatch.setattr(cpu_simd, "PROMPT_PATH", "auto")
    packed = packed_weight(37, 100, "int4", 32, True)
    for kernel_cls in (k.values[0] for k in KERNELS):
        if not kernel_cls.can_implement(LayerSpec.of(packed, "fp32", "cpu"))[0]:
            continue
        kernel = kernel_cls(packed, LayerSpec.of(packed, "fp32", "cpu"))
        vnni = kernel_cls.variant() == "avx512_vnni"
        assert kernel.prompt_q8 == vnni and kernel.q8_gemm == vnni


def q8_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """x quantized to int8 per ``block`` columns (scale amax / 127, round half to even; a last block
    may be shorter) and back to float: what the kernel multiplies."""
    width = -(-x.shape[1] // block) * block
    xp = torch.nn.functional.pad(x, (0, width - x.shape[1])).view(x.shape[0], -1, block)
    amax = xp.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(xp * inv)
    return (q * (amax / 127.0)).view(x.shape[0], width)[:, : x.shape[1]]


def prompt_and_reference(kernel_cls, packed, m, seed=1):
    spec = LayerSpec.of(packed, "fp32", "cpu")
    kernel = kernel_cls(packed, spec)
    x = torch.randn(m, packed.in_features, generator=torch.Generator().manual_seed(seed)) * 3
    got = kernel.prompt(kernel.activations(x), torch.empty(m, packed.out_features))
    weight = packed.dequantize(torch.float32)
    return kernel, x, got, q8_blocks(x, kernel.prompt_block()) @ weight.t(), ReferenceKernel(packed, spec).forward(x)


@pytest.mark.parametrize("kernel_cls", KERNELS)
@pytest.mark.parametrize("fmt_name,group_size,sym", CASES)
@pytest.mark.parametrize("n,k", [(37, 100), (16, 320)])
def test_prompt_rows_are_int8_blocks_times_the_weight(kernel_cls, fmt_name, group_size, sym, n, k):
    packed = packed_weight(n, k, fmt_name, group_size, sym)
    for m in (1, 3, 8, 11, 17):  # one row, whole passes of 4 / 8 rows, partial ones
        kernel, _, got, want, exact = prompt_and_reference(kernel_cls, packed, m)
        assert kernel.prompt_q8
        scale = want.abs().max()
        assert ((got - want).abs().max() / scale).item() <= 1e-4
        assert 1e-5 < ((got - exact).abs().max() / scale).item() <= 2e-2  # int8 activations: not the fp32 result


@pytest.mark.parametrize("kernel_cls", KERNELS)
def test_prompt_rows_do_not_depend_on_their_batch(kernel_cls):
    """A prompt alone gets the same numbers, bit for bit, as inside a batch of prompts."""
    packed = packed_weight(70, 300, "int4", 64, False)
    kernel, x, got, _, _ = prompt_and_reference(kernel_cls, packed, 13)
    for i in (0, 5, 12):
        alone = kernel.prompt(kernel.activations(x[i: i + 1]), torch.empty(1, 70))
        assert torch.equal(alone[0], got[i])


@pytest.mark.parametrize("kernel_cls", KERNELS)
def test_prompt_adds_bias_and_accumulates_into_strided_rows(kernel_cls):
    packed = packed_weight(70, 300, "int8", -1, True)
    kernel, x, plain, _, _ = prompt_and_reference(kernel_cls, packed, 9)
    bias = torch.randn(70, generator=torch.Generator().manual_seed(3))
    base = torch.randn(9, 90, generator=torch.Generator().manual_seed(4))
    out = base.clone()
    kernel.prompt(kernel.activations(x), out[:, 5:75], kernel.padded_bias(bias), accumulate=True)
    assert torch.allclose(out[:, 5:75] - base[:, 5:75], plain + bias, atol=1e-5 * plain.abs().max().item())
    assert torch.equal(out[:, :5], base[:, :5]) and torch.equal(out[:, 75:], base[:, 75:])  # nothing else written


@pytest.mark.parametrize("kernel_cls", KERNELS)
def test_formats_and_settings_without_the_q8_path_run_as_any_batch(kernel_cls, monkeypatch):
    """Codebook formats and int8 compute keep their paths; $QUANTLLM_CPU_PROMPT_PATH=same turns it off."""
    x = torch.randn(5, 100, generator=torch.Generator().manual_seed(5))
    cases = [("nf4", 64, "fp32"), ("int4", 32, "int8")]
    monkeypatch.setattr(cpu_simd, "PROMPT_PATH", "same")
    cases.append(("int4", 32, "fp32"))
    for fmt_name, gs, compute in cases:
        packed = packed_weight(37, 100, fmt_name, gs, True)
        kernel = kernel_cls(packed, LayerSpec.of(packed, compute, "cpu"))
        assert not kernel.prompt_q8
        xa = kernel.activations(x)
        want = kernel.gemv(xa, torch.empty(5, 37))
        assert torch.equal(kernel.prompt(xa, torch.empty(5, 37)), want)


@pytest.mark.parametrize("kernel_cls", KERNELS)
def test_a_bf16_models_prompt_rows(kernel_cls):
    """bf16 compute: on the int8 GEMM (VNNI builds) bf16 rows in and out, any row count; elsewhere the
    bf16 GEMM from its row count (gemm_rows) and the fused q8 kernel below it."""
    packed = packed_weight(70, 320, "int4", 128, True)
    kernel = kernel_cls(packed, LayerSpec.of(packed, "bf16", "cpu"))
    weight = packed.dequantize(torch.float32)
    for m in (5, 40):
        x = torch.randn(m, 320, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
        got = kernel.prompt(kernel.activations(x), torch.empty(m, 70, dtype=torch.bfloat16)).float()
        if kernel.q8_gemm or m < kernel.gemm_rows:
            want = q8_blocks(x.float(), kernel.prompt_block()) @ weight.t()
        else:
            want = x.float() @ weight.t()
        assert ((got - want).abs().max() / want.abs().max()).item() <= 8e-3  # bf16 outputs: 2^-8 rounding

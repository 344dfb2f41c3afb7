"""The bf16 Gram kernel (csrc/qgram.cpp) against x.float().T @ x.float().

Products of bf16 values are exact in fp32, so only the order of the fp32 sums differs: the
tolerance is a few fp32 roundings of the largest entry, 1e-6 relative to max |H|."""
from __future__ import annotations

import pytest
import torch

from quant_core import QuantConfig, cpu_features, quantize
from quant_core.algorithms import hessians as hessians_module
from quant_core.algorithms import input_stats as input_stats_module
from quant_core.algorithms.hessians import Hessian
from quant_core.algorithms.input_stats import InputStats
from quant_core.kernels.cpu_gram import accumulate_gram, gram_kernel_reason, has_dpbf16
from quant_core.testing import tiny_llama_lm

REASON = gram_kernel_reason(torch.zeros(1, 1))
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON or "runs")
PATHS = [True, False] if has_dpbf16() else [False]  # vdpbf16ps, widening FMA


def _bf16(t, k, seed=0):
    return torch.randn(t, k, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


def _relative_error(h, ref):
    return ((h - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("dpbf16", PATHS)
@pytest.mark.parametrize("t,k", [(1, 1), (7, 5), (33, 40), (257, 96), (300, 70)])  # odd tokens, ragged strips
def test_gram_matches_the_fp32_product(dpbf16, t, k):
    x = _bf16(t, k)
    start = _bf16(k, k, seed=1).float()
    start = start @ start.T  # symmetric, as the kernel requires
    h = start.clone()
    accumulate_gram(h, x, 0.5, dpbf16=dpbf16)
    ref = start + 0.5 * (x.float().T @ x.float())
    assert _relative_error(h, ref) < 1e-6
    assert torch.equal(h, h.T)  # the lower triangle is the upper's copy


@pytest.mark.parametrize("dpbf16", PATHS)
def test_gram_on_a_calibration_sized_batch_sums_in_fp32(dpbf16):
    """4096 tokens of SmolLM2's widths: a bf16-rounded result would be off by ~4e-3."""
    x = _bf16(4096, 576)
    h = torch.zeros(576, 576)
    accumulate_gram(h, x, 1.0, dpbf16=dpbf16)
    assert _relative_error(h, x.float().T @ x.float()) < 1e-6


def test_gram_rejects_a_mismatched_accumulator():
    with pytest.raises(ValueError, match="square"):
        accumulate_gram(torch.zeros(4, 5), _bf16(3, 4), 1.0)


def test_fp32_inputs_are_rounded_to_bf16_once():
    x = torch.randn(64, 48)
    h = torch.zeros(48, 48)
    accumulate_gram(h, x, 1.0)
    xb = x.to(torch.bfloat16).float()
    assert _relative_error(h, xb.T @ xb) < 1e-6


def test_bf16_hessian_matches_the_fp32_hessian_of_bf16_inputs():
    """Hessian(bf16=True) keeps 2/n * sum x x^T over several batches, token weights included."""
    batches = [_bf16(50 + 10 * i, 40, seed=i) for i in range(3)]
    weights = [torch.rand(b.shape[0], generator=torch.Generator().manual_seed(9 + i)) + 0.1
               for i, b in enumerate(batches)]
    for w in (None, weights):
        fast, plain = Hessian(40, bf16=True), Hessian(40)
        assert fast.bf16_gram
        for i, b in enumerate(batches):
            fast.add(b, None if w is None else w[i])
            # the fast path rounds x * sqrt(w) to bf16: the reference gets the same rounding
            xb = b if w is None else (b.float() * w[i].sqrt()[:, None]).to(torch.bfloat16)
            plain.add(xb)
        assert fast.n == plain.n
        assert _relative_error(fast.matrix, plain.matrix) < 1e-6


def test_bf16_input_stats_h_matches_addmm():
    x = [_bf16(64, 32, seed=i) for i in range(2)]
    fast, plain = InputStats(32, bf16=True), InputStats(32)
    for b in x:
        fast.add(b)
        plain.add(b)
    assert _relative_error(fast.H, plain.H) < 1e-6
    assert torch.equal(fast.abs_sum, plain.abs_sum)


def test_gram_kernel_is_not_used_off_the_cpu_or_for_fp32_calibration():
    assert Hessian(8).bf16_gram is False
    assert "fp32 CPU" in gram_kernel_reason(torch.zeros(2, 2, dtype=torch.float64))


@pytest.mark.skipif(not cpu_features.at_least("avx512"), reason="needs AVX-512 to lower")
def test_level_lowered_to_avx2_takes_the_widening_path(monkeypatch):
    monkeypatch.setenv(cpu_features.ISA_ENV, "avx2")
    assert not has_dpbf16()
    x = _bf16(40, 33)
    h = torch.zeros(33, 33)
    accumulate_gram(h, x, 1.0)
    assert _relative_error(h, x.float().T @ x.float()) < 1e-6


@pytest.mark.parametrize("algorithm", ["gptq", "awq"])
def test_only_bf16_calibration_sums_its_hessians_with_the_kernel(monkeypatch, algorithm):
    calls = []

    def spy(h, x, alpha, dpbf16=None):
        calls.append(tuple(h.shape))
        accumulate_gram(h, x, alpha, dpbf16)

    monkeypatch.setattr(hessians_module, "accumulate_gram", spy)
    monkeypatch.setattr(input_stats_module, "accumulate_gram", spy)
    batches = [torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    for dtype, expected in (("fp32", False), ("bf16", True)):
        calls.clear()
        quantize(tiny_llama_lm(layers=1), QuantConfig(algorithm=algorithm, group_size=32, calibration_dtype=dtype),
                 calibration=batches, progress=False, device="cpu")
        assert bool(calls) is expected, dtype
    assert (128, 128) in calls  # the MLP's output projection's input (intermediate_size 128)

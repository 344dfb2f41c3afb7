"""Stacked (fused) CPU kernels: several packed weights read as one, with bias and accumulation.

Tolerance as test_cpu_simd: 1e-4 of the largest output magnitude (same arithmetic, other order).
"""
from __future__ import annotations

import pytest
import torch

from quant_core.kernels.base import LayerSpec
from quant_core.kernels.cpu_repack import fusable
from quant_core.kernels.reference import ReferenceKernel

from test_cpu_simd import KERNELS, packed_weight  # pytest puts this directory on sys.path


def _reference(parts, compute, x):
    return torch.cat([ReferenceKernel(p, LayerSpec.of(p, compute, "cpu")).forward(x) for p in parts], -1)


@pytest.mark.parametrize("kernel_cls", KERNELS)
@pytest.mark.parametrize("fmt_name,group_size,sym,compute", [
    ("int4", 64, True, "fp32"), ("int4", 32, False, "int8"), ("int8", -1, True, "int8"), ("nf4", 64, True, "fp32"),
])
def test_stacked_rows_equal_the_concatenated_outputs(kernel_cls, fmt_name, group_size, sym, compute):
    # Row counts that do not fill whole tiles, so tiles straddle two segments.
    parts = [packed_weight(n, 320, fmt_name, group_size, sym, seed=s) for s, n in enumerate((37, 9, 21))]
    kernels = [kernel_cls(p, LayerSpec.of(p, compute, "cpu")) for p in parts]
    fused = kernel_cls.stacked(kernels)
    assert fused.w.out_features == 67 and len(fused.w.segments) == 3
    assert fused.w.segments[1].data_ptr() == kernels[1].w.segments[0].data_ptr()  # shared, not copied
    for m in (1, 5):
        x = torch.randn(m, 320, generator=torch.Generator().manual_seed(m))
        want = _reference(parts, compute, x)
        got = fused.gemv(fused.activations(x), torch.empty(m, 67))
        assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-4


@pytest.mark.parametrize("kernel_cls", KERNELS)
def test_bias_and_accumulate_into_strided_rows(kernel_cls):
    packed = packed_weight(37, 100, "int4", 32, False)
    kernel = kernel_cls(packed, LayerSpec.of(packed, "fp32", "cpu"))
    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    bias = torch.randn(37, generator=torch.Generator().manual_seed(1))
    base = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    out = base.clone()
    kernel.gemv(kernel.activations(x), out[:, 5:42], kernel.padded_bias(bias), accumulate=True)
    want = base[:, 5:42] + ReferenceKernel(packed, kernel.spec).forward(x) + bias
    assert torch.allclose(out[:, 5:42], want, atol=1e-4 * want.abs().max().item())
    assert torch.equal(out[:, :5], base[:, :5]) and torch.equal(out[:, 42:], base[:, 42:])  # nothing else written


@pytest.mark.parametrize("kernel_cls", KERNELS)
def test_weights_that_cannot_stack_say_why(kernel_cls):
    a, b = packed_weight(16, 64, "int4", 32, True), packed_weight(16, 64, "int4", 64, True)
    ka, kb = (kernel_cls(p, LayerSpec.of(p, "fp32", "cpu")) for p in (a, b))
    assert "group" in fusable([ka.w, kb.w])
    with pytest.raises(ValueError, match="cannot stack"):
        kernel_cls.stacked([ka, kb])

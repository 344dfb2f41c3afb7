"""IPEX kernel against the reference kernel. Runs only where IPEX imports (./scripts/test-ipex)."""
from __future__ import annotations

import pytest
import torch

from quant_core import cpu_features
from quant_core.kernels.base import LayerSpec
from quant_core.kernels.ipex import IpexKernel, import_ipex
from quant_core.formats import get_format
from quant_core.kernels.reference import ReferenceKernel
from quant_core.packed import PackedWeight
from quant_core.primitives import quantize_weight

ipex, why = import_ipex()
pytestmark = [
    pytest.mark.skipif(ipex is None or bool(why), reason=f"IPEX unavailable here: {why} (run ./scripts/test-ipex)"),
    pytest.mark.skipif(not cpu_features.at_least("avx512", cpu_features.detected_isa()),
                       reason="IPEX kernel is registered for AVX-512 CPUs only"),
]


def packed_weight(n, k, fmt_name, group_size, sym):
    fmt = get_format(fmt_name)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(0))
    codes, scales, zeros = quantize_weight(w, fmt, group_size, sym, scale_dtype=torch.float16)
    return PackedWeight.from_codes(codes, scales, zeros, fmt, group_size)


# Tolerance relative to the largest output: IPEX computes in its own order and precision.
TOL = {"fp32": 1e-3, "bf16": 3e-2, "int8": 3e-2}


@pytest.mark.parametrize("fmt_name,group_size,sym", [
    ("int4", 128, True), ("int4", 32, False), ("int4", -1, True), ("int8", -1, True), ("int8", 128, False),
    ("nf4", 64, True),
])
@pytest.mark.parametrize("compute", ["fp32", "bf16", "int8"])
def test_matches_reference(fmt_name, group_size, sym, compute):
    packed = packed_weight(48, 256, fmt_name, group_size, sym)
    spec = LayerSpec.of(packed, compute, "cpu")
    ok, reason = IpexKernel.can_implement(spec)
    if not ok:
        pytest.skip(reason)
    for m in (1, 5):
        x = torch.randn(m, 256, generator=torch.Generator().manual_seed(m))
        want = ReferenceKernel(packed, spec).forward(x).float()
        got = IpexKernel(packed, spec).forward(x).float()
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err <= TOL[compute], f"relative error {err:.2e}"

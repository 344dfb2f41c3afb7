"""Every kernel that runs here reads a double-quantized layer: the scales it repacks are the decoded ones.

Each kernel is built from the layer's ``packed`` view, as QuantLinear builds it, and compared with
the plain reference (the weight dequantized with the decoded scales, then a matmul), with the
tolerances of the kernels' own tests (relative to the largest output).
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of triton (see kernels/triton_jit)
    os.environ["TRITON_INTERPRET"] = "1"

from quant_core import QuantConfig, QuantLinear, cpu_features  # noqa: E402
from quant_core.algorithms.rtn import rtn  # noqa: E402
from quant_core.kernels.base import LayerSpec  # noqa: E402
from quant_core.kernels.registry import load_kernel_class  # noqa: E402

ISA = cpu_features.detected_isa()
KERNELS = [
    pytest.param("reference", "cpu", id="reference"),
    pytest.param("cpu_avx2", "cpu", id="avx2", marks=pytest.mark.skipif(
        not cpu_features.at_least("avx2", ISA), reason="CPU has no AVX2+FMA")),
    pytest.param("cpu_avx512", "cpu", id="avx512", marks=pytest.mark.skipif(
        not cpu_features.at_least("avx512", ISA), reason="CPU has no AVX-512")),
    pytest.param("triton", "cuda", id="triton"),  # Triton's interpreter on CPU tensors without a GPU
    pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="the CUDA kernel needs a CUDA GPU")),
]
GPU = "cuda" if torch.cuda.is_available() else "cpu"  # where the GPU kernels' input lives
CASES = [("nf4", 64, "sym"), ("int4", 32, "asym"), ("int8", -1, "sym")]


@pytest.mark.parametrize("fmt,group_size,scheme", CASES)
@pytest.mark.parametrize("kernel,device_type", KERNELS)
def test_kernel_reads_decoded_scales(kernel, device_type, fmt, group_size, scheme):
    if kernel == "triton":
        pytest.importorskip("triton", reason="Triton is not installed (pip install .[gpu])")
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 64 if kernel == "cuda" else 40, bias=False)  # the CUDA kernel: N % 64 == 0
    config = QuantConfig(weight_dtype=fmt, group_size=group_size, scheme=scheme, double_quant=True,
                         double_quant_block=16)
    layer = QuantLinear.from_packed(rtn(lin.weight, config).pack(config), None)
    packed = layer.to(GPU if device_type == "cuda" else "cpu").packed
    assert packed.double_quant is not None and torch.equal(packed.scales, packed.double_quant.decode(torch.float16))
    compute = "bf16" if kernel == "cuda" else "fp32"  # the CUDA kernel computes in fp16 / bf16 only
    spec = LayerSpec.of(packed, compute, device_type)
    x = torch.randn(3, 128)
    want = torch.nn.functional.linear(x, packed.dequantize().cpu())
    x_in = x.to(GPU) if device_type == "cuda" else x
    got = load_kernel_class(kernel)(packed, spec).forward(x_in).float().cpu()
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= (1e-2 if compute == "bf16" else 1e-4), f"{kernel}: relative error {err:.2e}"

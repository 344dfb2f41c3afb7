"""The Triton kernels against the reference kernel (dequantize, then matmul).

Without a GPU the same kernels run through Triton's interpreter on CPU tensors
(small shapes: the interpreter is slow); with one they run compiled on CUDA.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of triton (see triton_jit)
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="Triton is not installed (pip install .[gpu])")

from quant_core.formats import get_format  # noqa: E402
from quant_core.kernels.base import LayerSpec  # noqa: E402
from quant_core.kernels.reference import ReferenceKernel  # noqa: E402
from quant_core.kernels.registry import choose_kernel, explain  # noqa: E402
from quant_core.kernels.triton_kernel import GEMV_MAX_ROWS, TritonKernel  # noqa: E402
from quant_core.packed import PackedWeight  # noqa: E402
from quant_core.primitives import quantize_weight  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# ||out - ref|| / ||ref||: both sides round the dequantized weight to the activation dtype,
# but accumulate in different orders (and the GEMV never rounds the weight at all).
TOLERANCE = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 1.5e-2}


def make_packed(fmt_name, n, k, group_size, sym, zero_mode=None, act_order=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    fmt = get_format(fmt_name)
    w = torch.randn(n, k, generator=gen)
    codes, scales, zeros = quantize_weight(w, fmt, group_size, sym, scale_dtype=torch.float16)
    g_idx = None
    if act_order:  # a shuffled column -> group map, as act-order GPTQ writes
        g_idx = torch.arange(k, dtype=torch.int32)[torch.randperm(k, generator=gen)] // group_size
    packed = PackedWeight.from_codes(codes, scales, zeros, fmt, group_size, g_idx)
    if zero_mode == "min":  # GGUF Q4_1-style float group minimums
        packed.zeros = (torch.randn(scales.shape, generator=gen) * 0.1).to(torch.float16)
    return packed


def check(packed, rows, compute="fp32", lead=()):
    packed = PackedWeight(packed.fmt, packed.in_features, packed.out_features, packed.group_size,
                          *(None if t is None else t.to(DEVICE) for t in
                            (packed.qweight, packed.scales, packed.zeros, packed.g_idx)))
    spec = LayerSpec.of(packed, compute, "cuda")
    x = torch.randn(*lead, rows, packed.in_features, device=DEVICE).to(DTYPES[compute])
    out = TritonKernel(packed, spec).forward(x)
    ref = ReferenceKernel(packed, spec).forward(x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all()
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    assert err < TOLERANCE[compute], f"relative error {err:.2e} over {TOLERANCE[compute]}"


# (format, out, in, group, sym, zero_mode, act_order): odd sizes on purpose (K not a
# multiple of the group or of a tile, N not a multiple of a block).
CASES = [
    ("int4", 40, 136, 64, False, None, False),
    ("int4", 33, 72, 32, True, None, False),
    ("int4", 24, 40, -1, True, None, False),
    ("int8", 24, 40, -1, True, None, False),
    ("int8", 24, 64, 32, False, None, False),
    ("int2", 24, 70, 32, True, None, False),
    ("nf4", 24, 64, 32, True, None, False),
    ("fp4_e2m1", 24, 64, 32, True, None, False),
    ("int4", 24, 64, 32, False, "min", False),
    ("int4", 24, 64, 32, False, None, True),
    ("int4", 64, 128, 64, False, None, False),  # every GEMV tile full: the unmasked path
    ("nf4", 64, 128, 32, True, None, False),
]


@pytest.mark.parametrize("rows", [1, GEMV_MAX_ROWS + 3], ids=["gemv", "gemm"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_reference(case, rows):
    fmt, n, k, gs, sym, zero_mode, act_order = case
    check(make_packed(fmt, n, k, gs, sym, zero_mode, act_order), rows)


@pytest.mark.parametrize("compute", ["bf16", "fp16"])
@pytest.mark.parametrize("rows", [1, 9], ids=["gemv", "gemm"])
def test_half_activations(compute, rows):
    check(make_packed("int4", 48, 128, 32, True), rows, compute)


def test_leading_batch_dims_and_empty_input():
    packed = make_packed("int4", 16, 64, 32, True)
    check(packed, 3, lead=(2,))
    kernel = TritonKernel(packed, LayerSpec.of(packed, "fp32", "cuda"))
    assert kernel.forward(torch.randn(0, 64)).shape == (0, 16)


def spec(fmt="int4", group_size=128, compute="bf16", device="cuda", k=4096):
    f = get_format(fmt)
    return LayerSpec(f.name, f.bits, group_size, k, 4096, True, False, "none", compute, device)


@pytest.mark.parametrize("kwargs, words", [
    (dict(device="cpu"), "CUDA devices"),
    (dict(fmt="int3"), "3-bit"),
    (dict(compute="int8"), "quantized activations"),
    (dict(fmt="int2", group_size=8), "multiple of 16"),
])
def test_declines_with_reason(kwargs, words):
    ok, reason = TritonKernel.can_implement(spec(**kwargs))
    assert not ok and words in reason


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0),
                    reason="this GPU is older than Ampere, where the kernel declines by design")
def test_registry_prefers_triton_on_cuda_after_the_cuda_kernel():
    names = [name for name, _, _ in explain(spec())]
    assert names.index("cuda") < names.index("triton") < names.index("reference")
    assert dict((n, ok) for n, ok, _ in explain(spec()))["triton"] is True
    if not dict((n, ok) for n, ok, _ in explain(spec()))["cuda"]:
        assert choose_kernel(spec()) is TritonKernel
    assert choose_kernel(spec(fmt="int3")).name == "reference"  # falls back, with the reason logged


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("compute", ["bf16", "fp16"])
@pytest.mark.parametrize("rows", [1, 2, 4, 5, 16, 33, 64, 300])
@pytest.mark.parametrize("fmt, gs, sym", [("int4", 128, True), ("int4", 32, False), ("int4", 64, True),
                                          ("int4", -1, True), ("nf4", 64, True), ("fp4_e2m1", 32, True),
                                          ("int8", -1, True), ("int8", 128, False), ("int2", 64, True)])
def test_gpu_shapes(fmt, gs, sym, rows, compute):
    check(make_packed(fmt, 1000, 4096 + 128, gs, sym), rows, compute)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 48])
def test_gpu_odd_and_act_order(rows):
    check(make_packed("int4", 4000, 1032, 8, False), rows, "bf16")  # K a multiple of 8 only
    check(make_packed("int4", 777, 2048, 128, True, act_order=True), rows, "bf16")
    check(make_packed("int4", 777, 2048, 32, False, zero_mode="min"), rows, "fp16")


@gpu
@pytest.mark.gpu
def test_gpu_quantlinear_chooses_triton_and_replays_in_a_graph():
    from quant_core.modules import QuantLinear

    linear = QuantLinear.from_packed(make_packed("int4", 512, 1024, 128, True), torch.randn(512)).cuda()
    x = torch.randn(3, 1024, device="cuda", dtype=torch.bfloat16)
    eager = linear(x)
    assert linear.kernel.name == "triton"
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = linear(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert torch.equal(captured, linear(x)) and not torch.equal(captured, eager)


@pytest.mark.parametrize("fmt", ["int4", "nf4"])
@pytest.mark.parametrize("rows", [1, 3, 16, 100])
def test_every_tuning_candidate(rows, fmt):
    """The tuner may pick any candidate, so each one must compute the same function (nf4: its
    levels come from registers in the GEMV and the expanding GEMM)."""
    from quant_core.kernels import triton_tuning
    from quant_core.kernels.triton_jit import interpreting

    n, k = (1500, 2048 + 64) if DEVICE == "cuda" else (40, 192)
    packed = make_packed(fmt, n, k, 64, fmt == "nf4")
    packed = PackedWeight(packed.fmt, k, n, packed.group_size,
                          *(None if t is None else t.to(DEVICE) for t in (packed.qweight, packed.scales, packed.zeros, None)))
    spec = LayerSpec.of(packed, "fp16", "cuda")
    kernel, ref = TritonKernel(packed, spec), ReferenceKernel(packed, spec)
    x = torch.randn(rows, k, device=DEVICE, dtype=torch.float16)
    expected = ref.forward(x).float()
    if rows <= GEMV_MAX_ROWS:
        cands, run = triton_tuning.gemv_candidates(rows, n, kernel.weight.n_words, interpreting()), kernel._run_gemv
    else:
        cands, run = triton_tuning.gemm_candidates(rows, n, k, interpreting()), kernel._run_gemm
    assert rows <= GEMV_MAX_ROWS or any(c.expand for c in cands)
    for cfg in cands:
        err = ((run(x, cfg).float() - expected).norm() / expected.norm()).item()
        assert err < TOLERANCE["fp16"], f"{cfg.label()}: relative error {err:.2e}"

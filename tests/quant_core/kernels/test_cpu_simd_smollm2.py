"""On the real SmolLM2, the default CPU kernel writes the same greedy text as the reference kernel (int8)."""
from __future__ import annotations

import copy

import pytest
import torch

from quant_core import cpu_features
from quant_core.config import QuantConfig
from quant_core.decode import greedy_generate
from quant_core.modules import QuantLinear
from quant_core.quantize import quantize


@pytest.mark.slow
def test_int8_greedy_text_matches_reference_kernel(smollm2):
    if not cpu_features.at_least("avx2", cpu_features.detected_isa()):
        pytest.skip("CPU has no AVX2: the C++ kernels never run here")
    model, tok = smollm2
    qmodel = quantize(copy.deepcopy(model), QuantConfig(weight_dtype="int8", group_size=-1))
    ids = tok("The three primary colors are", return_tensors="pt").input_ids
    fast, _ = greedy_generate(qmodel, ids, 16)
    chosen = {m.kernel.name for m in qmodel.modules() if isinstance(m, QuantLinear)}
    assert chosen <= {"cpu_avx2", "cpu_avx512"} and chosen
    for m in qmodel.modules():
        if isinstance(m, QuantLinear):
            m.forced_kernel, m._kernel = "reference", None
    ref, _ = greedy_generate(qmodel, ids, 16)
    assert {m.kernel.name for m in qmodel.modules() if isinstance(m, QuantLinear)} == {"reference"}
    assert tok.decode(fast[0]) == tok.decode(ref[0])
    assert torch.equal(fast, ref)


@pytest.mark.slow
@pytest.mark.parametrize("weight_dtype,group_size", [("int4", 128), ("nf4", 64), ("int8", -1)])
def test_avx2_decode_kernels_write_the_reference_greedy_text(smollm2, weight_dtype, group_size):
    """The AVX2 build forced (as on AVX2-only CPUs): decode rows go through its row kernels
    (csrc/qgemv16_rows.cpp, nf4 csrc/qgemv16_lut.cpp), the prompt through the GEMM."""
    if not cpu_features.at_least("avx2", cpu_features.detected_isa()):
        pytest.skip("CPU has no AVX2: the C++ kernels never run here")
    model, tok = smollm2
    qmodel = quantize(copy.deepcopy(model), QuantConfig(weight_dtype=weight_dtype, group_size=group_size))
    ids = tok("The three primary colors are", return_tensors="pt").input_ids
    texts = {}
    for kernel in ("cpu_avx2", "reference"):
        for m in qmodel.modules():
            if isinstance(m, QuantLinear):
                m.forced_kernel, m._kernel = kernel, None
        texts[kernel], _ = greedy_generate(qmodel, ids, 16)
        assert {m.kernel.name for m in qmodel.modules() if isinstance(m, QuantLinear)} == {kernel}
    assert tok.decode(texts["cpu_avx2"][0]) == tok.decode(texts["reference"][0])

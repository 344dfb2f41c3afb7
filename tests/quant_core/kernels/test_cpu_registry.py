"""Which CPU kernel the registry picks, on any machine, by faking what the CPU can do."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from quant_core import cpu_features
from quant_core.config import QuantConfig
from quant_core.kernels import cpu_simd
from quant_core.kernels import ipex as ipex_kernel
from quant_core.kernels.base import LayerSpec
from quant_core.kernels.registry import NoKernelError, choose_kernel, explain
from quant_core.quantize import quantize

SPEC = LayerSpec("int4_fullrange", 4, 128, 256, 64, True, False, "none", "fp32", "cpu")


def fake_level(monkeypatch, level):
    monkeypatch.setattr(cpu_features, "detected_isa", lambda flags=None: level)
    monkeypatch.delenv(cpu_features.ISA_ENV, raising=False)
    # These tests are about our kernels: keep an installed IPEX out of the way.
    monkeypatch.setattr(ipex_kernel, "import_ipex", lambda: (None, "not installed (faked)"))


def test_avx2_only_cpu_gets_the_avx2_kernel(monkeypatch):
    fake_level(monkeypatch, "avx2")
    assert choose_kernel(SPEC).name == "cpu_avx2"
    verdicts = {name: (ok, reason) for name, ok, reason in explain(SPEC)}
    assert verdicts["cpu_avx512"] == (False, "needs AVX512 but this CPU's level is avx2")


@pytest.mark.parametrize("level", ["avx512", "avx512_vnni", "amx"])
def test_avx512_cpu_gets_the_avx512_kernel(monkeypatch, level):
    fake_level(monkeypatch, level)
    assert choose_kernel(SPEC).name == "cpu_avx512"
    expected = "avx512" if level == "avx512" else "avx512_vnni"
    assert cpu_simd.CpuAvx512Kernel.variant() == expected


def test_cpu_without_avx2_falls_back_to_reference_with_reasons(monkeypatch):
    fake_level(monkeypatch, "none")
    assert choose_kernel(SPEC).name == "reference"
    reasons = [r for name, ok, r in explain(SPEC) if name.startswith("cpu_")]
    assert all("level is none" in r for r in reasons) and len(reasons) == 2


def test_missing_compiler_is_a_stated_reason(monkeypatch):
    fake_level(monkeypatch, "avx2")
    monkeypatch.setattr(cpu_simd, "_library_or_reason",
                        lambda variant: (None, "C++ kernels unavailable (BuildError: no C++ compiler found)"))
    assert choose_kernel(SPEC).name == "reference"
    assert any("no C++ compiler" in r for _, _, r in explain(SPEC))


def test_env_lowers_isa_level_but_never_raises_it(monkeypatch):
    fake_level(monkeypatch, "avx512")
    monkeypatch.setenv(cpu_features.ISA_ENV, "avx2")
    assert cpu_features.isa_level() == "avx2"
    assert choose_kernel(SPEC).name == "cpu_avx2"
    monkeypatch.setenv(cpu_features.ISA_ENV, "amx")
    with pytest.raises(ValueError, match="only lower"):
        cpu_features.isa_level()


def test_forcing_a_kernel_that_cannot_run_the_layer_fails(monkeypatch):
    fake_level(monkeypatch, "avx2")
    odd = LayerSpec("int4_fullrange", 4, 48, 96, 64, True, False, "none", "fp32", "cpu")
    assert choose_kernel(odd).name == "reference"
    with pytest.raises(NoKernelError, match="multiple of 32"):
        choose_kernel(odd, forced="cpu_avx2")
    monkeypatch.setenv("QUANTLLM_KERNEL", "cpu_avx2")
    with pytest.raises(NoKernelError, match="forced"):
        choose_kernel(odd)


def test_quantized_model_runs_on_the_fastest_cpu_kernel_by_default():
    if not cpu_features.at_least("avx2", cpu_features.detected_isa()):
        pytest.skip("CPU has no AVX2")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 40))
    x = torch.randn(3, 96)
    qmodel = quantize(model, QuantConfig(group_size=32))
    y = qmodel(x)
    names = {m.kernel.name for m in qmodel.modules() if hasattr(m, "kernel") and m.kernel is not None}
    expected = "cpu_avx512" if cpu_features.at_least("avx512") else "cpu_avx2"
    assert names == {expected}
    ref = quantize(nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 40)).requires_grad_(False),
                   QuantConfig(group_size=32, kernel="reference"))
    ref.load_state_dict(qmodel.state_dict())
    assert torch.allclose(y, ref(x), atol=1e-4)


def test_choice_is_logged_once_with_rejections(monkeypatch, caplog):
    import logging
    fake_level(monkeypatch, "avx2")
    spec = LayerSpec("int4_fullrange", 4, 64, 192, 40, True, False, "none", "fp32", "cpu")
    with caplog.at_level(logging.INFO, logger="quant_core.kernels"):
        choose_kernel(spec)
        choose_kernel(spec)
    lines = [r.getMessage() for r in caplog.records if "kernel cpu_avx2" in r.getMessage()]
    assert len(lines) == 1 and "cpu_avx512: needs AVX512" in lines[0]

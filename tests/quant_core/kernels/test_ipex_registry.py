"""When the registry picks IPEX, tested in the main environment by faking IPEX and the CPU."""
from __future__ import annotations

import types

import pytest

from quant_core import cpu_features
from quant_core.kernels import ipex as ipex_kernel
from quant_core.kernels.base import LayerSpec
from quant_core.kernels.registry import choose_kernel, explain

SPEC = LayerSpec("int4_fullrange", 4, 128, 256, 64, True, False, "none", "bf16", "cpu")
FAKE_IPEX = types.SimpleNamespace(__version__="2.13.0+cpu")


def setup(monkeypatch, level, ipex_result):
    monkeypatch.setattr(cpu_features, "detected_isa", lambda flags=None: level)
    monkeypatch.delenv(cpu_features.ISA_ENV, raising=False)
    monkeypatch.setattr(ipex_kernel, "import_ipex", lambda: ipex_result)


def verdict(name, spec=SPEC):
    return next((ok, reason) for n, ok, reason in explain(spec) if n == name)


def test_chosen_on_avx512_when_it_imports_against_this_torch(monkeypatch):
    setup(monkeypatch, "avx512_vnni", (FAKE_IPEX, ""))
    assert choose_kernel(SPEC).name == "ipex"
    assert "lowp BF16" in verdict("ipex")[1]


def test_avx2_cpu_skips_ipex_even_when_installed(monkeypatch):
    setup(monkeypatch, "avx2", (FAKE_IPEX, ""))
    assert choose_kernel(SPEC).name == "cpu_avx2"
    assert verdict("ipex") == (False, "IPEX's fast weight-only kernels need AVX-512; this CPU's level is avx2")


def test_version_mismatch_is_the_stated_reason(monkeypatch):
    setup(monkeypatch, "avx512", (FAKE_IPEX, ipex_kernel.version_mismatch("2.8.0+cpu", "2.13.0+cpu")))
    assert choose_kernel(SPEC).name == "cpu_avx512"
    assert verdict("ipex") == (False, "IPEX 2.8.0+cpu needs torch 2.8.x, running 2.13.0+cpu")


def test_import_failure_is_the_stated_reason(monkeypatch):
    setup(monkeypatch, "avx512", (None, "fails to import against torch 2.13.0: AttributeError: x"))
    assert choose_kernel(SPEC).name == "cpu_avx512"
    assert "AttributeError" in verdict("ipex")[1]


@pytest.mark.parametrize("changes,words", [
    ({"weight_dtype": "fp4_e2m1"}, "no fp4_e2m1 weights"),
    ({"zero_mode": "min", "sym": False}, "group minimums"),
    ({"device_type": "cuda"}, "CPU backend"),
    ({"in_features": 200}, "multiple of group_size"),
])
def test_layers_ipex_cannot_run_go_elsewhere(monkeypatch, changes, words):
    setup(monkeypatch, "avx512", (FAKE_IPEX, ""))
    ok, reason = ipex_kernel.IpexKernel.can_implement(LayerSpec(**{**SPEC.__dict__, **changes}))
    assert not ok and words in reason


def test_versions_pair_by_major_minor():
    assert ipex_kernel.version_mismatch("2.8.0+cpu", "2.8.1") == ""
    assert "needs torch 2.8.x" in ipex_kernel.version_mismatch("2.8.0", "2.13.0")


def test_real_import_in_this_environment_reports_a_reason_or_works():
    ipex_kernel.import_ipex.cache_clear()
    module, why = ipex_kernel.import_ipex()
    assert (module is None) == bool(why) or why.startswith("IPEX")

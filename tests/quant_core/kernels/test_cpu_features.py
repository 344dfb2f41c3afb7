"""ISA detection from /proc/cpuinfo flags."""
from __future__ import annotations

import pytest

from quant_core import cpu_features

AVX2 = {"avx", "avx2", "fma", "f16c", "sse4_2"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


@pytest.mark.parametrize("flags,level", [
    (set(), "none"),
    ({"avx", "avx2"}, "none"),  # AVX2 without FMA is not enough
    (AVX2, "avx2"),
    (AVX2 | {"avx512f"}, "avx2"),  # AVX-512 foundation alone (no BW/VL) is not used
    (AVX512, "avx512"),
    (AVX512 | {"avx512_vnni"}, "avx512_vnni"),
    (AVX512 | {"avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"}, "amx"),
])
def test_levels_from_flags(monkeypatch, flags, level):
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "x86_64")
    assert cpu_features.detected_isa(frozenset(flags)) == level


def test_non_x86_has_no_level(monkeypatch):
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "aarch64")
    assert cpu_features.detected_isa(frozenset(AVX512)) == "none"


def test_bad_env_value_names_the_choices(monkeypatch):
    monkeypatch.setenv(cpu_features.ISA_ENV, "sse9")
    with pytest.raises(ValueError, match="avx2"):
        cpu_features.isa_level()


def test_summary_reports_this_machine():
    info = cpu_features.summary()
    assert info["isa_level"] in cpu_features.ISA_LEVELS
    assert isinstance(info["torch_capability"], str) and info["threads"] >= 1


def test_bf16_units_follow_the_lowered_level(monkeypatch):
    """An AVX-512-BF16 CPU run as AVX2-only (benchmarks' --isa avx2) has no bf16 units either."""
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset(AVX512 | {"avx512_bf16"}))
    monkeypatch.setattr(cpu_features, "detected_isa", lambda flags=None: "avx512")
    assert cpu_features.native_bf16()
    monkeypatch.setenv(cpu_features.ISA_ENV, "avx2")
    assert not cpu_features.native_bf16()

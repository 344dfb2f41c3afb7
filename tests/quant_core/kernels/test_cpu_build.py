"""The CPU kernels' build: sources compiled side by side, then linked; a failure leaves nothing in the cache."""
import os
import stat

import pytest

from quant_core.errors import BuildError
from quant_core.kernels import cpu_build


def fake_compiler(path, fail_on: str):
    """A $CXX that answers --version and fails on commands naming ``fail_on`` (a source, or "-o" for the link)."""
    path.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'fake c++ 1.0'; exit 0; }}\n"
                    f"case \"$*\" in *{fail_on}*) echo 'boom in {fail_on}' >&2; exit 1;; esac\n"
                    "while [ $# -gt 0 ]; do [ \"$1\" = -o ] && : > \"$2\"; shift; done\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.mark.parametrize("fail_on", ["qgemm8.cpp", "lib.so"])
def test_a_failing_compile_or_link_raises_with_the_command_and_leaves_nothing(tmp_path, monkeypatch, fail_on):
    monkeypatch.setenv("QUANTLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", fake_compiler(tmp_path / "cxx", fail_on))
    with pytest.raises(BuildError, match=f"boom in {fail_on}") as err:
        cpu_build.build("avx2")
    assert "-mavx2" in str(err.value)  # the failing command, to rerun by hand
    assert os.listdir(tmp_path / "cache" / "kernels") == []  # no half-built library, no objects


def test_every_source_is_compiled_once_then_linked(tmp_path, monkeypatch):
    log = tmp_path / "calls"
    cxx = tmp_path / "cxx"
    fake_compiler(cxx, "never-matches")
    cxx.write_text(cxx.read_text().replace("case", f"echo \"$*\" >> {log}\ncase", 1))
    monkeypatch.setenv("QUANTLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(cxx))
    out = cpu_build.build("avx2")
    calls = log.read_text().splitlines()
    compiles = [c for c in calls if " -c " in c]
    assert sorted(c.split(" -c ")[1].split()[0].rsplit("/", 1)[1] for c in compiles) == sorted(cpu_build.SOURCES)
    assert len(calls) == len(cpu_build.SOURCES) + 1 and calls[-1].count(".o") == len(cpu_build.SOURCES)
    assert out.exists() and out.parent == tmp_path / "cache" / "kernels"


def test_the_first_build_shows_its_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QUANTLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", fake_compiler(tmp_path / "cxx", "never-matches"))
    cpu_build.build("avx2")
    files = len(cpu_build.SOURCES) + 1
    err = capsys.readouterr().err
    assert "Compiling the avx2 CPU kernels (once, cached)" in err and f"{files}/{files}" in err
    cpu_build.build("avx2")
    assert capsys.readouterr().err == ""  # cached: nothing to show

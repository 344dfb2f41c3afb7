"""The CUDA kernels' build (no GPU needed: a fake nvcc): a progress line while nvcc runs, nothing left in the
cache after a failure."""
import os
import time
import stat

import pytest

from quant_core.errors import BuildError
from quant_core.kernels import cuda_build


def fake_nvcc(path, seconds: float, fail: bool = False):
    """An nvcc that answers --version, takes ``seconds``, then writes its -o file or fails."""
    body = "echo 'nvcc error: boom' >&2; exit 1" if fail else \
        "while [ $# -gt 0 ]; do [ \"$1\" = -o ] && : > \"$2\"; shift; done"
    path.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'release 13.0, fake'; exit 0; }\n"
                    f"sleep {seconds}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_a_build_shows_a_ticking_line_and_lands_in_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QUANTLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(cuda_build.NVCC_ENV, fake_nvcc(tmp_path / "nvcc", 1.6))
    out = cuda_build.build(True, "int4", "none", "90")
    err = capsys.readouterr().err
    assert out.exists() and out.parent == tmp_path / "cache" / "kernels"
    assert err.count("Compiling the CUDA kernels (bf16 int4 none, sm_90; once, cached)") >= 2  # refreshed while waiting
    assert cuda_build.build(True, "int4", "none", "90") == out and capsys.readouterr().err == ""


def test_a_failed_build_raises_with_nvcc_s_words_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(cuda_build.NVCC_ENV, fake_nvcc(tmp_path / "nvcc", 0, fail=True))
    with pytest.raises(BuildError, match="nvcc error: boom") as err:
        cuda_build.build(False, "cb4", "none", "80")
    assert "-DQMM_FMT=1" in str(err.value)  # the failing command, to rerun by hand
    assert os.listdir(tmp_path / "cache" / "kernels") == []


def test_nvcc_past_its_limit_is_stopped_and_raises(tmp_path):
    marker = tmp_path / "still-running"
    cmd = ["sh", "-c", f"sleep 3; : > {marker}"]
    with pytest.raises(BuildError, match="took over 1 s"):
        cuda_build._run_with_clock(cmd, "slow", timeout=1)
    time.sleep(3)
    assert not marker.exists()  # killed, not left behind writing into the cache

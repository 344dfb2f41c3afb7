"""The tuner's choice: timed once, kept for the process and in a file for later processes."""
from __future__ import annotations

import json
import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of triton (see triton_jit)
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="Triton is not installed (pip install .[gpu])")

from quant_core.kernels import triton_tuning  # noqa: E402
from quant_core.kernels.triton_tuning import Config, ConfigCache  # noqa: E402

CANDIDATES = [Config(128, 16, 4, 4), Config(64, 32, 4, 2), Config(32, 16, 2, 1)]
KEY = ("gemv", 1, 4096, 14336, 4, 0, False, False, 128, "torch.bfloat16")


class FakeTimer:
    """Pretends the second candidate is fastest; counts how often anything was timed."""

    def __init__(self):
        self.calls = 0

    def __call__(self, run, cfg):
        self.calls += 1
        return {CANDIDATES[1]: 1.0}.get(cfg, 2.0)


def test_timed_once_then_read_back_by_a_new_process(tmp_path):
    path = tmp_path / "tuning.json"
    timer = FakeTimer()
    cache = ConfigCache(path, timer)
    assert cache.choose(KEY, CANDIDATES, run=None, tune=True) == CANDIDATES[1]
    assert timer.calls == len(CANDIDATES)
    assert cache.choose(KEY, CANDIDATES, run=None, tune=True) == CANDIDATES[1] and timer.calls == 3
    assert list(json.loads(path.read_text()).values()) == [CANDIDATES[1].label()]

    later = ConfigCache(path, FakeTimer())
    assert later.choose(KEY, CANDIDATES, run=None, tune=True) == CANDIDATES[1]
    assert later.timer.calls == 0


def test_a_saved_config_no_longer_offered_is_timed_again(tmp_path):
    path = tmp_path / "tuning.json"
    ConfigCache(path, FakeTimer()).choose(KEY, CANDIDATES, run=None, tune=True)
    timer = FakeTimer()
    fewer = [CANDIDATES[0], CANDIDATES[2]]
    assert ConfigCache(path, timer).choose(KEY, fewer, run=None, tune=True) in fewer
    assert timer.calls == 2


def test_unreadable_or_unwritable_cache_only_costs_a_retune(tmp_path):
    path = tmp_path / "tuning.json"
    path.write_text("{not json")
    timer = FakeTimer()
    with pytest.warns(UserWarning, match="ignoring the Triton tuning cache"):
        assert ConfigCache(path, timer).choose(KEY, CANDIDATES, run=None, tune=True) == CANDIDATES[1]
    assert timer.calls == 3 and json.loads(path.read_text())  # rewritten whole
    blocked = tmp_path / "file" / "tuning.json"
    (tmp_path / "file").write_text("a file where the folder should be")
    with pytest.warns(UserWarning, match="could not write"):
        assert ConfigCache(blocked, FakeTimer()).choose(KEY, CANDIDATES, run=None, tune=True) == CANDIDATES[1]


def test_nothing_is_timed_when_tuning_is_off(tmp_path, monkeypatch):
    timer = FakeTimer()
    cache = ConfigCache(tmp_path / "tuning.json", timer)
    assert cache.choose(KEY, CANDIDATES, run=None, tune=False) == CANDIDATES[0]
    monkeypatch.setenv(triton_tuning.TUNE_ENV, "0")
    assert cache.choose(KEY, CANDIDATES, run=None, tune=True) == CANDIDATES[0]
    assert timer.calls == 0 and not (tmp_path / "tuning.json").exists()

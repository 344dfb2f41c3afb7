"""calibration_skip_tokens: the first positions of every window leave the statistics algorithms fit."""
from __future__ import annotations

import torch

from quant_core import QuantConfig, quantize
from quant_core.algorithms import hessians
from quant_core.algorithms import input_stats
from quant_core.calibration import statistics_rows
from quant_core.testing import tiny_llama_lm


def test_statistics_rows_drops_leading_positions_of_every_window():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    assert torch.equal(statistics_rows(x, 2), x[:, 2:])
    assert statistics_rows(x, 0) is x
    flat = x.reshape(-1, 3)  # no sequence axis: nothing to drop
    assert statistics_rows(flat, 2) is flat


def _rows_seen(monkeypatch, cls, algorithm: str, skip: int) -> set[int]:
    seen = set()
    original = cls.add

    def add(self, x, *weights):
        seen.add(x.reshape(-1, x.shape[-1]).shape[0])
        return original(self, x, *weights)

    monkeypatch.setattr(cls, "add", add)
    model = tiny_llama_lm(layers=1)
    batches = [torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    quantize(model, QuantConfig(algorithm=algorithm, group_size=32, calibration_skip_tokens=skip),
             calibration=batches, progress=False, device="cpu")
    return seen


def test_gptq_hessians_leave_out_the_skipped_tokens(monkeypatch):
    assert _rows_seen(monkeypatch, hessians.Hessian, "gptq", 0) == {2 * 16}
    assert _rows_seen(monkeypatch, hessians.Hessian, "gptq", 1) == {2 * 15}


def test_awq_statistics_leave_out_the_skipped_tokens(monkeypatch):
    assert _rows_seen(monkeypatch, input_stats.InputStats, "awq", 3) == {2 * 13}

"""Issue 18's targets as gpu_speed.py reads them off its own run (benchmarks/gpu_speed_targets.py)."""
from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_speed_targets as T  # noqa: E402

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (4096, 128256)]


def cell(us: float, base: float = 30.0) -> dict:
    return {"eager_us": us * 2, "graph_us": us, "x_bf16": base / us}


def layer_rows(int4_us: float, m: int, peer_us: float = 100.0, run: str = "r") -> list[dict]:
    return [{"run": run, "k": k, "n": n, "m": m, "int4_bw_tbs": 3.3, "int4_bw_pct_of_copy": 80.0,
             "cells": {"bf16 cuBLAS": cell(30.0), T.INT4: cell(int4_us), T.NF4: cell(12.0), T.INT8: cell(15.0),
                       T.KEPT: cell(28.0), "tinygemm int4 g128": cell(peer_us),
                       "gemlite int4 g128": {"error": "n/a: ImportError: no gemlite"},
                       "bnb nf4 (bs64)": {"eager_us": peer_us, "graph_us": None, "x_bf16_eager": 0.1}}}
            for k, n in SHAPES]


def by_label(targets: list[dict]) -> dict:
    return {t["target"].split(" >=")[0].split(":")[0]: t for t in targets}


def test_met_and_missed_follow_the_measured_ratios():
    rows = layer_rows(9.0, 1) + layer_rows(11.0, 16) + layer_rows(40.0, 64) + layer_rows(33.0, 256)
    rows[2]["cells"][T.INT4] = cell(10.5)  # 2.86×: one shape short of 3.0×
    rows[3]["int4_bw_pct_of_copy"] = 70.0
    t = by_label(T.layer_targets(rows))
    assert t["int4 g128 M=1"]["status"].startswith("missed on 1 of 4 shapes (best 3.33×); bandwidth missed on 1 of 4")
    assert "3.33× / 3.33× / 2.86× / 3.33×" in t["int4 g128 M=1"]["measured"]
    assert t["nf4 M=1"]["status"] == "met"  # 30 / 12 = 2.5×
    assert t["int8 M=1"]["status"] == "met"  # 2.0×
    assert t["M=16"]["status"] == "met"  # 2.73×
    assert t["M=64"]["status"].startswith("missed on 4 of 4")  # 0.75×
    # M=256: the plain kernel misses (0.91×), the kept copy (1.07×) meets it
    m256 = t["M=256"]["status"]
    assert m256.startswith("met (best of the two)") and "without a kept copy: missed on 4 of 4" in m256


def test_peers_count_graph_or_eager_time_and_skip_cells_that_could_not_run():
    rows = layer_rows(9.0, 1, peer_us=8.0)  # tinygemm (graph) and bitsandbytes (eager only) both faster
    peer = T.peer_target(rows)
    # per row: int4 vs tinygemm, int4 vs bnb, nf4 vs bnb (gemlite's error cell is not counted)
    assert peer["measured"].startswith("behind in 12 of 12 cells")
    assert "int4 g128 vs tinygemm int4 g128 at 4096×4096 M=1 (9.0 vs 8.0 µs)" in peer["measured"]
    assert peer["status"] == "missed in 12 cells"
    assert T.peer_target(layer_rows(9.0, 1, peer_us=50.0))["status"] == "met"


def test_a_shape_not_measured_is_not_called_met():
    rows = layer_rows(5.0, 1)
    rows[1]["cells"][T.INT4] = {"error": "n/a: NoKernelError"}
    status = by_label(T.layer_targets(rows))["int4 g128 M=1"]["status"]
    assert status.startswith("not measured in 1 of 4 shapes")


def test_decode_target_and_run_selection():
    data = {"layers": layer_rows(9.0, 1, run="a") + layer_rows(50.0, 1, run="b"),
            "decode": [{"run": "a", "weights": "bf16", "batches": {"1": {"x_bf16": 1.0}, "16": {"x_bf16": 1.0}}},
                       {"run": "a", "weights": "int4 g128", "batches": {"1": {"x_bf16": 2.4}, "16": {"x_bf16": 1.3}}},
                       {"run": "a", "weights": "peer bnb nf4 (bs64)", "error": "RuntimeError: capture"}]}
    targets = T.run_targets(data, "a")
    assert "3.33×" in targets[0]["measured"]  # run a's rows only (run b's int4 is 0.60×)
    assert targets[-1]["measured"] == "int4 2.40× / 1.30×"
    assert targets[-1]["status"] == "missed at batch 16"
    assert T.run_targets(data, "nope") == []

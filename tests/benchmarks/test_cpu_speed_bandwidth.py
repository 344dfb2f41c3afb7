"""The interleaved bandwidth reference (benchmarks/cpu_speed_bandwidth.py) and how its rows render:
each kernel block against the reads beside it, disturbed kernels left out of the target."""
from __future__ import annotations

import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import cpu_speed_bandwidth as bw  # noqa: E402
from cpu_speed_report import bandwidth_ratios, bandwidth_table  # noqa: E402


def test_interleaved_sets_each_kernel_block_against_its_adjacent_reads():
    calls = []
    read = [lambda: (calls.append("r"), time.sleep(0.001))]
    kernel = [lambda: (calls.append("k"), time.sleep(0.002))]  # half the read's GB/s
    r = bw.interleaved(kernel, read, 1 << 20, repeats=1)
    assert 0.35 < r["ratio"] < 0.65 and r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
    assert r["read_gb_s"] > r["gb_s"]
    blocks = "".join(c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c)
    assert blocks == "k" + "rk" * bw.ALTERNATIONS + "r"  # first touch (kernel, read), then read first and last


def test_read_chunks_cover_the_bytes_of_one_call():
    chunks = bw.read_calls(4096, 3)
    assert len(chunks) == 3 and float(chunks[2]()) == 1024.0  # 1024 float32 ones per chunk


def test_interleaved_rows_render_and_disturbed_ones_leave_the_target():
    row = {"gb_s": 20.0, "read_gb_s": 30.0, "read_min": 29.0, "read_max": 31.0, "ratio": 0.66, "ratio_min": 0.6,
           "ratio_max": 0.7}
    data = {"read_gb_s": 30.0, "read_gb_s_end": 31.0, "threads": 2, "run": "r1",
            "kernels": {"cpu_avx2|int4 g128|fp32|4096x4096": row,
                        "cpu_avx2|nf4 g64|fp32|4096x4096": row | {"ratio": 0.1, "disturbed": True, "remeasured": True}}}
    text = "\n".join(bandwidth_table(data))
    assert "| 20.0 | 30.0 (29.0-31.0) | 66 % (60-70) |" in text and "disturbed twice: not counted" in text
    assert bandwidth_ratios(data, "cpu_avx2|") == [0.66]
    old = {"read_gb_s": 40.0, "kernels": {"cpu_avx2|int8|fp32|4096x4096": 30.0}}  # runs before the interleaving
    assert bandwidth_ratios(old, "cpu_avx2|") == [0.75] and "| 30.0 | 75 % |" in "\n".join(bandwidth_table(old))

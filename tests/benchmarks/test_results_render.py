"""The benchmark results: every markdown file is what its JSON renders to, and the quality
figures exist once. Rendering needs only the standard library (plots: matplotlib, optional)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_speed_report  # noqa: E402
import quality_report  # noqa: E402
import render  # noqa: E402
import report  # noqa: E402
from quality_columns import ALL_COLUMNS, COLUMNS, cell_key  # noqa: E402


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    return tmp_path


def test_committed_markdown_is_generated_from_its_json():
    assert render.stale(list(render.RENDERERS)) == []


def test_every_result_json_has_the_envelope_and_every_run_named_exists():
    for name in render.RENDERERS:
        data = report.load(name)
        assert data["benchmark"] == name and data["schema"] == report.SCHEMA
        assert data["runs"], f"{name}.json names no run"
        named = {item["run"] for part in ("cells", "sizes", "timing", "results", "models", "double_quant")
                 for item in data.get(part, {}).values() if isinstance(item, dict) and "run" in item}
        named |= {item["run"] for part in ("layers", "launch", "decode", "gptq") for item in data.get(part, [])}
        assert named <= set(data["runs"]), f"{name}: figures name unknown runs {named - set(data['runs'])}"


def test_no_result_markdown_without_json():
    """A markdown table in results/ that no JSON generates could disagree with the others unnoticed."""
    orphans = [p.name for p in report.RESULTS.glob("*.md") if p.stem not in render.RENDERERS]
    assert orphans == []


def test_quality_cells_appear_once_per_setting():
    """The stale-figure bug: the same RTN cell with two values in two files. Now one store, one value."""
    data = report.load("quality")
    text = report.path_of("quality", ".md").read_text()
    rtn = data["cells"][cell_key("RTN", "int4_g128_sym")]["ppl"]
    assert f"{rtn:.2f}" in text
    assert set(data["sizes"]) <= {"fp32", *ALL_COLUMNS}
    assert not report.path_of("quality_algorithms", ".md").exists()


def test_save_update_and_runs(results_dir):
    data = report.load("demo")
    run = report.add_run(data, {"date": "2026-01-01 00:00 UTC", "commit": "abc1234", "device": "cpu"})
    report.save("demo", data)
    report.put("demo", "cells", "a", {"ppl": 1.5, "run": run})
    report.put("demo", "cells", "b", {"ppl": 2.5, "run": run})  # a second writer keeps the first's cell
    stored = json.loads((results_dir / "demo.json").read_text())
    assert stored["cells"] == {"a": {"ppl": 1.5, "run": run}, "b": {"ppl": 2.5, "run": run}}
    assert run == "2026-01-01T00:00 abc1234" and not list(results_dir.glob("*.tmp"))
    again = report.add_run(stored, {"date": "2026-01-01 00:00 UTC", "commit": "abc1234", "device": "cpu"})
    assert again == "2026-01-01T00:00 abc1234 #2" and len(stored["runs"]) == 2


def test_code_hash_names_the_packages_contents_alone(tmp_path):
    """Same files, same hash wherever the tree lies (whatever its git metadata says); any edit changes it;
    caches and built files do not count."""
    (tmp_path / "quant_core" / "kernels").mkdir(parents=True)
    (tmp_path / "quant_core" / "kernels" / "a.cu").write_text("kernel")
    (tmp_path / "quant_core" / "b.py").write_text("x = 1")
    first = report.code_hash(tmp_path)
    (tmp_path / "quant_core" / "__pycache__").mkdir()
    (tmp_path / "quant_core" / "__pycache__" / "b.pyc").write_bytes(b"compiled")
    (tmp_path / "quant_core" / "lib.so").write_bytes(b"built")
    (tmp_path / "README.md").write_text("not a package file")
    assert report.code_hash(tmp_path) == first and len(first) == 12
    (tmp_path / "quant_core" / "b.py").write_text("x = 2")
    assert report.code_hash(tmp_path) != first
    run = report.new_run("cpu", "python x.py")
    assert run["code_hash"] == report.code_hash()
    lines = report.runs_section({"runs": {"r": run}})
    assert f"(code {run['code_hash']})" in lines[2] and "code_hash:" not in lines[2]


def test_table_and_fmt():
    assert report.table(["a", "b"], [[1, None]]) == ["| a | b |", "|---|---|", "| 1 | None |"]
    assert report.fmt(None) == "-" and report.fmt(3.14159, ".3f") == "3.142"


def test_gap_closed_and_targets_from_cells():
    cells = {"fp32": {"ppl": 20.0}, cell_key("RTN", "int4_g128_sym"): {"ppl": 30.0},
             cell_key("AWQ", "int4_g128_sym"): {"ppl": 24.0}, cell_key("GPTQ", "int4_g128_sym"): {"ppl": 31.0}}
    assert quality_report.gap(cells, "AWQ", "int4_g128_sym", 128) == pytest.approx(60.0)
    lines = "\n".join(quality_report.targets({"cells": cells}, {}, 128))
    assert "AWQ at int4_fullrange g128 sym: gap closed >= 50 %: 60 % (AWQ) -> met" in lines
    assert "GPTQ int4_fullrange g128 sym (31.00 > RTN 30.00)" in lines


def test_quantease_targets_take_the_best_quantease_row():
    cells = {"fp32": {"ppl": 25.0}, cell_key("QuantEase", "int4_g128_sym"): {"ppl": 29.5},
             cell_key("GPTQ->QuantEase", "int4_g128_sym"): {"ppl": 28.5},
             cell_key("GPTQ->QuantEase", "int3_g128_asym"): {"ppl": 35.0},
             cell_key("QuantEase +1% outliers", "int3_pc_asym"): {"ppl": 31.0}}
    lines = "\n".join(quality_report.targets({"cells": cells}, {}, 128))
    assert "int4_fullrange g128 sym: perplexity <= 29.00: 28.50 (GPTQ->QuantEase) -> met" in lines
    assert "int3 g128 asym: perplexity <= 34.00: 35.00 (GPTQ->QuantEase) -> MISSED by 1.00" in lines
    assert "int4 per-channel asym: perplexity <= 30.50: not measured" in lines
    assert "int3 per-channel asym: perplexity <= 31.25: 31.00 (QuantEase +1% outliers) -> met" in lines
    assert "GPTQ (best row) at int4_fullrange g128 sym: gap closed >= 60 %: not measured" in lines


def test_quality_table_marks_each_cell_with_its_run():
    data = {"runs": {"r1": {"device": "cpu"}, "r2": {"device": "gpu"}},
            "cells": {"fp32": {"ppl": 25.0, "run": "r1"}, cell_key("RTN", "nf4_g64"): {"ppl": 30.123, "run": "r2"}}}
    text = "\n".join(quality_report.render_quality(data, peer={}))
    assert "30.12 <sup>b</sup>" in text and "**b) r2**" in text
    column = list(COLUMNS).index("nf4_g64")
    rtn_row = next(line for line in text.splitlines() if line.startswith("| RTN |"))
    assert rtn_row.split(" | ")[1 + column].startswith("30.12")


def test_double_quant_rows_and_size_column():
    entry = {"packed_mb": 50.0, "ckpt_mb": 170.0, "ppl_wiki": 19.5, "ppl_legal": 25.25, "run": "r1"}
    data = {"runs": {"r1": {"device": "cpu"}}, "setup": {"quantized_weights": 100_000_000},
            "sizes": {"nf4_g64": {"packed_mb": 56.4, "ckpt_mb": 173.4, "run": "r1"}},
            "double_quant": {"nf4_g64:plain": entry,
                             "nf4_g64:dq": {**entry, "ckpt_mb": 171.84, "scale_rel_rms": 0.0042, "scale_rel_max": 0.117,
                                            "weight_rel_err": 0.0935, "weight_rel_err_dq": 0.09356}}}
    text = "\n".join(quality_report.render_quality(data, peer={}))
    assert "| nf4 g64 | yes | 4.000 | 50.00 | 171.84 | 19.500 | 25.250 | 0.420 / 11.70 | 9.350 -> 9.356 | a |" in text
    assert "| nf4 g64 | 4.51 | 56.40 | 173.4 | 171.8 |" in text  # the size table's double-quant column


def test_gpu_layer_cells_render_errors_and_eager_only_captures():
    row = {"run": "X", "k": 64, "n": 32, "m": 1, "int4_bw_tbs": 0.5, "int4_bw_pct_of_copy": 16.7,
           "cells": {"bf16 cuBLAS": {"eager_us": 10.0, "graph_us": 5.0, "x_bf16": 1.0},
                     "ours int4 g128": {"eager_us": 8.0, "graph_us": 2.5, "x_bf16": 2.0},
                     "peer a": {"error": "n/a: ImportError: x"},
                     "peer b": {"eager_us": 20.0, "graph_us": None, "x_bf16_eager": 0.5}}}
    lines = gpu_speed_report.layer_table([row])
    assert lines[0] == "| K×N | M | bf16 cuBLAS | ours int4 g128 | ours int4 eff. BW (graph) | peer a | peer b |"
    assert lines[2] == ("| 64×32 | 1 | 10.0 / 5.0 (1.00×) | 8.0 / 2.5 (2.00×) | 0.50 TB/s (17%) | "
                        "n/a: ImportError: x | 20.0 / no graph (0.50× eager) |")
    text = "\n".join(gpu_speed_report.render({"layers": [row], "runs": {"X": {}}, "stitched": "two runs"}))
    assert "**Stitched from several runs:** two runs" in text


def test_render_check_reports_a_hand_edited_file(results_dir):
    report.save("batch", {"runs": {"r": {}}, "setup": {}, "speedup": 3.2, "identical": True,
                          "peak_rss_mib": 100.0, "load_s": 1.0,
                          "modes": {"chain.batch": {"median_s": 1.0, "tokens": 10, "tok_s": 10.0}}})
    render.render_one("batch", plots=False)
    assert render.stale(["batch"]) == []
    path = results_dir / "batch.md"
    path.write_text(path.read_text().replace("3.20x", "3.50x"))
    assert render.stale(["batch"]) == [str(path)]


def test_plots_are_drawn_from_the_json(results_dir):
    pytest.importorskip("matplotlib")
    import plots

    cpu = {"models": {"smollm2|fp32": {"decode_b1_tok_s": 10.0}, "smollm2|int4_sym": {"decode_b1_tok_s": 30.0}},
           "llamacpp": {"decode_b1_tok_s": 100.0}}
    assert plots.cpu_plot(cpu, results_dir / "cpu.png")
    assert (results_dir / "cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plots.quality_plot({"cells": {}}, results_dir / "q.png")  # nothing to draw: no file
    assert not (results_dir / "q.png").exists()

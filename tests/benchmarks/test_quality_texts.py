"""The out-of-domain column (issue 16): one figure per text in each cell, kept apart from the WikiText figure
every stored table already has, rendered with whether it beats RTN; and the parallel runner's queue."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import quality_parallel  # noqa: E402
import quality_report  # noqa: E402
from quality_columns import COLUMNS, ROWS, cell_key  # noqa: E402
from quality_texts import PRIMARY, TEXTS, cell_ppl, cell_run, missing_texts, text_id, with_figure  # noqa: E402


def test_a_stored_wikitext_cell_keeps_its_figure_and_gains_the_other_text():
    old = {"ppl": 32.47, "seconds": 45.0, "run": "h100"}  # a cell as every table stored it before
    assert cell_ppl(old, PRIMARY) == 32.47 and missing_texts(old, TEXTS) == ["legal"]
    new = with_figure(old, "legal", 31.81, "h200", seconds=50.0)
    assert new["ppl"] == 32.47 and new["run"] == "h100" and new["seconds"] == 45.0  # untouched
    assert new["texts"] == {"legal:all": {"ppl": 31.81, "run": "h200", "seconds": 50.0}}
    assert cell_ppl(new, "legal") == 31.81 and cell_run(new, "legal") == "h200" and missing_texts(new, TEXTS) == []
    assert old == {"ppl": 32.47, "seconds": 45.0, "run": "h100"}  # a copy, not the stored dict


def test_a_figure_on_other_windows_is_another_entry():
    cell = {"texts": {text_id("legal", 16): {"ppl": 30.0, "run": "r"}}}
    assert text_id("legal", 16) == "legal:16" and cell_ppl(cell, "legal") is None


def test_the_primary_figure_replaces_an_error():
    cell = with_figure({"error": "RuntimeError: x", "run": "a"}, PRIMARY, 30.0, "b", seconds=1.0)
    assert cell == {"ppl": 30.0, "run": "b", "seconds": 1.0}


def test_rendered_tables_show_both_texts_and_whether_each_cell_beats_rtn():
    n = 128
    cells = {"fp32": {"ppl": 25.0, "run": "r", "texts": {"legal:all": {"ppl": 18.0, "run": "r"}}},
             cell_key("RTN", "int4_g128_sym", n): {"ppl": 33.0, "run": "r", "texts": {"legal:all": {"ppl": 24.0, "run": "r"}}},
             cell_key("GPTQ", "int4_g128_sym", n): {"ppl": 32.0, "run": "r", "texts": {"legal:all": {"ppl": 31.0, "run": "r"}}}}
    text = "\n".join(quality_report.render_quality({"runs": {"r": {}}, "cells": cells}, peer={}))
    legal = text[text.index("## Perplexity on legal-ood"):]
    assert "| GPTQ | 32.00 <sup>a</sup> ✓ |" in text and "| GPTQ | 31.00 <sup>a</sup> ✗ |" in legal
    assert "| GPTQ | 12 % / -117 % |" in text  # gap closed, WikiText / legal-ood
    assert "GPTQ int4_fullrange g128 sym (31.00 > RTN 24.00)" in text
    assert "closes >= 30 % of RTN's gap on legal-ood: -117 % -> MISSED by 147 points" in text


def test_cells_run_in_the_briefs_order_then_longest_first():
    cells = quality_parallel.ordered_cells(list(ROWS), list(COLUMNS))
    first = ("RTN", "GPTQ", "GPTQ plain Hessian", "AWQ", "TEQ", "QuantEase", "GPTQ->QuantEase")
    assert cells[:7] == [(r, "int4_g128_sym") for r in first]
    assert cells[7][1] == "int3_g128_asym" and ("QuantEase +1% outliers", "int3_pc_asym") in cells[:22]
    assert len(cells) == len(set(cells)) == len(ROWS) * len(COLUMNS)
    rest = [quality_parallel.seconds(r) for r, _ in cells[21:]]
    assert rest == sorted(rest, reverse=True)


def test_chosen_cells_run_exactly_in_their_order_and_unknown_ones_are_refused():
    chosen = "TEQ scale ridge 0.3 calibration seed 1@int4_g128_sym;RTN@nf4_g64"
    assert quality_parallel.ordered_cells([], [], chosen) == [("TEQ scale ridge 0.3 calibration seed 1", "int4_g128_sym"),
                                                              ("RTN", "nf4_g64")]
    assert quality_parallel.seconds("TEQ scale ridge 0.3 calibration seed 1") == quality_parallel.SECONDS["TEQ"]
    with pytest.raises(SystemExit, match="unknown cells"):
        quality_parallel.ordered_cells([], [], "GPTQ seed9@int4_g128_sym")


def test_queue_claims_each_task_once_and_the_merge_says_what_ran(tmp_path):
    quality_parallel.write_queue(tmp_path / "queue", [("RTN", "int4_g128_sym"), ("GPTQ", "int4_g128_sym")])
    first, second = quality_parallel.claim(tmp_path / "queue", 0), quality_parallel.claim(tmp_path / "queue", 1)
    assert quality_parallel.claim(tmp_path / "queue", 0) is None
    assert json.loads(first.read_text())["row"] == "RTN" and second.name == "001-w1.json"
    first.rename(first.with_suffix(".done"))
    (tmp_path / "w0").mkdir()
    key = cell_key("RTN", "int4_g128_sym")
    (tmp_path / "w0" / "quality.json").write_text(json.dumps({"runs": {"r": {}}, "cells": {key: {"ppl": 1.0}}}))
    merged = quality_parallel.merge_workers(tmp_path, "r", stopped=[1])
    assert merged["cells"] == {key: {"ppl": 1.0}} and merged["parallel"]["stopped_workers"] == [1]
    assert merged["parallel"]["tasks"]["done"] == ["RTN:int4_g128_sym"]
    assert merged["parallel"]["tasks"]["cut_off_at_deadline"] == ["GPTQ:int4_g128_sym"]


def test_a_previous_calls_cells_are_not_queued_again(tmp_path):
    done = {"cells": {cell_key("RTN", "int4_g128_sym"): {"ppl": 1.0, "texts": {"legal:all": {"ppl": 2.0}}},
                      cell_key("GPTQ", "int4_g128_sym"): {"ppl": 1.0}}}  # GPTQ lacks legal-ood: queued again
    (tmp_path / "done.json").write_text(json.dumps(done))
    assert quality_parallel.finished([tmp_path / "done.json"], 128, list(TEXTS)) == {("RTN", "int4_g128_sym")}


def test_merge_replaces_cells_whole_and_keeps_the_old_figures(tmp_path, monkeypatch):
    import quality_merge
    import report

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    key = cell_key("GPTQ", "int4_g128_sym")
    report.save("quality", {"runs": {"old": {}}, "cells": {key: {"ppl": 32.47, "run": "old"}}})
    new = {key: {"ppl": 31.0, "run": "gpu", "texts": {"legal:all": {"ppl": 25.0, "run": "gpu"}}}}
    incoming = {"runs": {"gpu": {"device": "H200"}}, "cells": new,
                "parallel": {"tasks": {"done": ["GPTQ:int4_g128_sym"], "cut_off_at_deadline": []}}}
    assert quality_merge.fold("quality", incoming, "cells") == [key]
    data = report.load("quality")
    assert data["cells"] == new and data["superseded"] == {key: [{"ppl": 32.47, "run": "old"}]}
    assert data["runs"]["gpu"]["cells"] == "1 done, 0 cut off at deadline"
    smoke = {"runs": {"s": {"windows_override": 1}}, "cells": {}}
    with pytest.raises(SystemExit, match="smoke"):
        quality_merge.fold("quality", smoke, "cells")

"""quality_peer.md from quality_peer.json (Neural Compressor's cells): formatting only."""
from __future__ import annotations

import report
from quality_columns import COLUMNS, SEQLEN, WINDOWS

PEER = "quality_peer"
PEER_ROWS = ("RTN", "GPTQ", "GPTQ act_order", "AWQ", "TEQ")


def peer_cell(r) -> str:
    if r is None:
        return "-"
    return f"error: {r['error'][:160]}" if "error" in r else f"{r['ppl']:.2f}"


def render_peer(data: dict) -> list[str]:
    setup, results = data.get("setup", {}), data.get("results", {})
    samples = ", ".join(f"{k}: {v}" for k, v in setup.get("row_samples", {}).items())
    lines = report.header(PEER, "Neural Compressor weight-only quantization (peer table)")
    lines += [
        f"neural-compressor-pt {setup.get('nc_version', '?')}, torch {setup.get('torch', '?')}, "
        f"{setup.get('device', 'CPU')}. SmolLM2-135M-Instruct (fp32 from the embedded Q4_1 GGUF), WikiText-2 "
        f"test, seqlen {SEQLEN}, first {WINDOWS} windows. Calibration: the same {setup.get('n_samples')} x "
        f"{SEQLEN}-token windows" + (f" ({samples} windows)" if samples else "") + " of quantllm's shipped "
        f"WikiText-2 *valid* sample (seed 0) that quality.py gives our algorithms. GPTQ: percdamp 0.01, block "
        f"128, true-sequential; RTN/AWQ/TEQ with use_full_range; TEQ: Adam lr 1e-3, {setup.get('teq_steps')} "
        f"steps on the LM loss; lm_head kept float. Our figures for the same cells: quality.md.", "",
        "Perplexity (lower is better); `-` = not run, `error: ...` = Neural Compressor failed or did not finish.", ""]
    rows = [[row] + [peer_cell(results.get(f"{row}:{col}")) for col in COLUMNS] for row in PEER_ROWS]
    lines += report.table(["algorithm"] + [COLUMNS[c]["label"] for c in COLUMNS], rows)
    timing = [[key, r.get("n_samples", "?"), f"{r['seconds']:.0f}", f"{r['peak_rss_gb']:.2f}", r.get("load", "?"),
               r.get("run", "?")] for key, r in results.items() if "ppl" in r]
    lines += ["", "Quantize time and peak RSS per cell (one subprocess each; machine shared, see load):", ""]
    lines += report.table(["cell", "samples", "quantize s", "peak RSS GB", "load avg at start", "run"], timing)
    return lines + [""] + report.runs_section(data) + report.notes_section(data)


def write_peer() -> None:
    report.write_markdown(PEER, render_peer(report.load(PEER)))

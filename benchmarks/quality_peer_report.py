"""quality_peer.md from quality_peer.json (Neural Compressor's, GPTQModel's and AutoRound's cells): formatting only."""
from __future__ import annotations

import report
from quality_columns import COLUMNS, SEQLEN
from quality_texts import TEXTS, cell_ppl, text_id, windows_label

PEER = "quality_peer"
NC_ROWS = ("RTN", "GPTQ", "GPTQ act_order", "AWQ", "TEQ")  # Neural Compressor's, named as ours
# A peer's documented recipe beyond its defaults, as its own row: auto-round 0.16.1's RECIPES["best"]
# (auto_round/cli/main.py) is 1000 iterations on 512 samples, batch 8; its 2048-token windows are the table's
# 512 here, like every cell's. The 512 windows come from the same text and seed as our 128.
PEER_RECIPES = {"AutoRound best": {"iters": 1000, "n_samples": 512}}
PEER_ROWS = (*NC_ROWS, "GPTQModel GPTQ", "AutoRound", *PEER_RECIPES)


def peer_cell(r, text: str) -> str:
    if r is None:
        return "-"
    value = cell_ppl(r, text)
    if value is not None:
        return f"{value:.2f}" + (f" ({r['n_samples']})" if r.get("n_samples") not in (None, 128) else "")
    error = r.get("error") or r.get("texts", {}).get(text_id(text), {}).get("error")
    return f"error: {error[:160]}" if error else "-"


def render_peer(data: dict) -> list[str]:
    setup, results = data.get("setup", {}), data.get("results", {})
    samples = ", ".join(f"{k}: {v}" for k, v in setup.get("row_samples", {}).items())
    lines = report.header(PEER, "Peer quantizers on identical inputs: Neural Compressor, GPTQModel, AutoRound")
    lines += [
        f"neural-compressor-pt {setup.get('nc_version', '?')}, torch {setup.get('torch', '?')}, "
        f"{setup.get('device', 'CPU')}" + "".join(
            f"; {k} {v}" for k, v in setup.get("versions", {}).items() if k in ("gptqmodel", "auto-round"))
        + f" (where each cell ran: its run below). SmolLM2-135M-Instruct (fp32 from the embedded Q4_1 GGUF), "
        f"seqlen {SEQLEN}, every cell on each text of quality.md from one quantization. Calibration: the same "
        f"{setup.get('n_samples')} x "
        f"{SEQLEN}-token windows" + (f" ({samples} windows)" if samples else "") + " that quality.py gives our "
        f"algorithms at the time of the cell's run (QuantConfig's default calibration text, seed 0). GPTQ: percdamp 0.01, block "
        f"128, true-sequential; RTN/AWQ/TEQ with use_full_range; TEQ: Adam lr 1e-3, {setup.get('teq_steps')} "
        f"steps on the LM loss; lm_head kept float. GPTQModel GPTQ and AutoRound: each library's defaults but "
        f"the format, on the same windows, saved as GPTQ checkpoints and loaded by quantllm's GPTQ import (codes, "
        f"scales and zeros moved as they are) for the perplexity. Our figures for the same cells: quality.md.", "",
        "Perplexity (lower is better); `(n)` = calibrated on n windows, not 128; `-` = not run, `error: ...` = "
        "the peer failed or did not finish.", ""]
    for text, spec in TEXTS.items():
        rows = [[row] + [peer_cell(results.get(f"{row}:{col}"), text) for col in COLUMNS] for row in PEER_ROWS]
        lines += [f"### {spec.label}, {windows_label(text)}", ""]
        lines += report.table(["algorithm"] + [COLUMNS[c]["label"] for c in COLUMNS], rows) + [""]
    timing = [[key, r.get("n_samples", "?"), f"{r['seconds']:.0f}", f"{r['peak_rss_gb']:.2f}", r.get("load", "?"),
               r.get("run", "?")] for key, r in results.items() if "ppl" in r]
    lines += ["Quantize time and peak RSS per cell (one subprocess each; machine shared, see load):", ""]
    lines += report.table(["cell", "samples", "quantize s", "peak RSS GB", "load avg at start", "run"], timing)
    return lines + [""] + report.runs_section(data) + report.notes_section(data)


def write_peer() -> None:
    report.write_markdown(PEER, render_peer(report.load(PEER)))

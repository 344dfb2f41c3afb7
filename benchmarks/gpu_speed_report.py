"""gpu_speed.md from gpu_speed.json: formatting only (gpu_speed.py measures and fills the JSON).

The JSON's figures: ``layers`` (one row per run, shape and row count M: per column eager and
graph-replayed µs and the ratio bf16 graph time / this graph time, measured side by side),
``launch``, ``decode`` (tokens/s per batch), ``gptq``; ``targets`` and ``notes`` are written by
a person after a run. A file stitched from several runs says so in ``stitched``.
"""
from __future__ import annotations

import report

NAME = "gpu_speed"
BW_COLUMN = "ours int4 eff. BW (graph)"


def layer_cell(c: dict) -> str:
    if "error" in c:
        return c["error"]
    if c.get("graph_us") is None:
        return f"{c['eager_us']:.1f} / no graph ({c['x_bf16_eager']:.2f}× eager)"
    return f"{c['eager_us']:.1f} / {c['graph_us']:.1f} ({c['x_bf16']:.2f}×)"


def layer_columns(rows: list[dict]) -> list[str]:
    """Columns in first-seen order, the int4 bandwidth column after our own kernels (before the peers)."""
    cols = list(dict.fromkeys(name for r in rows for name in r["cells"]))
    ours_end = max((i for i, c in enumerate(cols) if c.startswith(("ours", "bf16", "tinygemm"))), default=-1) + 1
    return cols[:ours_end] + [BW_COLUMN] + cols[ours_end:]


def layer_table(rows: list[dict]) -> list[str]:
    cols = layer_columns(rows)
    out = []
    for r in rows:
        cells = [f"{r['int4_bw_tbs']:.2f} TB/s ({r['int4_bw_pct_of_copy']:.0f}%)" if c == BW_COLUMN
                 else layer_cell(r["cells"][c]) if c in r["cells"] else "-" for c in cols]
        out.append([f"{r['k']}×{r['n']}", r["m"], *cells])
    return report.table(["K×N", "M", *cols], out)


def decode_table(rows: list[dict]) -> list[str]:
    batches = list(dict.fromkeys(b for r in rows for b in r.get("batches", {})))
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["weights"], r["error"], *[""] * len(batches)])
            continue
        cells = [f"{r['batches'][b]['tok_s']:.1f} ({r['batches'][b]['mode']})" for b in batches]
        out.append([r["weights"], *cells, " / ".join(f"{r['batches'][b]['x_bf16']:.2f}×" for b in batches)])
    return report.table(["weights", *[f"batch {b} tok/s" for b in batches], "× bf16"], out)


def by_run(items: list[dict]) -> dict:
    runs: dict = {}
    for item in items:
        runs.setdefault(item["run"], []).append(item)
    return runs


def figures(data: dict) -> list[str]:
    out = []
    launch = by_run(data.get("launch", []))
    for run, rows in by_run(data.get("layers", [])).items():
        out += [f"## Layer GEMM, bf16 activations, run {run} (µs per call: eager / CUDA-graph replay; "
                "×: bf16 time / this time, graph)", ""] + layer_table(rows) + [""]
        for lo in launch.get(run, []):
            out += [f"Launch overhead of our Python path (int4 g128, 4096×4096, M=1), run {run}: host time per call "
                    f"{lo['host_us']:.1f} µs; eager {lo['eager_us']:.1f} µs vs graph {lo['graph_us']:.1f} µs per call "
                    "(one weight copy, L2-resident).", ""]
    for run, rows in by_run(data.get("decode", [])).items():
        out += [f"## Decode, synthetic Llama-3-8B ({rows[0]['layers']} layers), run {run}", ""] + decode_table(rows) + [""]
    for g in data.get("gptq", []):
        out += [f"## GPTQ int4 g128 on the GPU, run {g['run']}", "",
                f"Synthetic Llama-3-8B shapes, {g['layers']} layers, {g['samples']} × {g['seqlen']} random-token "
                f"calibration: wall {g['wall_s']:.1f} s, peak GPU memory {g['peak_gib']:.2f} GiB (model on CPU, "
                "one block at a time on the GPU).", ""]
    return out


def render(data: dict) -> list[str]:
    setup = data.get("setup", {})
    out = report.header(NAME, "GPU speed")
    if data.get("stitched"):
        out += [f"**Stitched from several runs:** {data['stitched']}", ""]
    out += [f"GPU: {setup.get('gpu', '?')} ({setup.get('sms', '?')} SMs, L2 {setup.get('l2_mb', '?')} MB), torch "
            f"{setup.get('torch', '?')}, triton {setup.get('triton', '?')}, transformers {setup.get('transformers', '?')}. "
            f"Measured copy bandwidth: {setup.get('copy_bandwidth', '?')}.", ""]
    out += [f"- Peer {label}: {text}" for label, text in data.get("peers", {}).items()]
    out += ["", "![speed against bf16 cuBLAS per row count](gpu_speed.png)", ""] + figures(data)
    if data.get("targets"):
        out += [f"## {data.get('target_title', 'Targets')}", ""]
        out += report.table(data.get("target_header", ["target", "measured", "status"]),
                            [[t["target"], t["measured"], t["status"]] for t in data["targets"]]) + [""]
    out += report.runs_section(data)
    if data.get("notes"):
        out += ["## Notes (written after the runs)", ""] + report.notes_section(data)
    return out


def write_report(data: dict) -> str:
    return report.write_markdown(NAME, render(data)).read_text()

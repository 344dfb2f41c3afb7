"""Markdown of benchmarks/results/gpu_gemv_cost.json (python benchmarks/render.py gpu_gemv_cost): the few-row
CUDA kernel's fixed-cost breakdown from a sweep of gpu_gemv_cost.py, and the shipped picks before / after."""
from __future__ import annotations

import report

ABLATIONS = ("base", "base/b4", "no_meeting", "no_sum_mma", "no_group_wait", "base_no_pdl")


def _pick(row: dict, name: str) -> str:
    c = row.get(name)
    return f"{c['config']} {c['rot_us']:.1f} ({row['bf16_us'] / c['rot_us']:.2f}×)" if c else "–"


def _fastest(row: dict) -> dict:
    """Each build's fastest cell (the first sweep named the 4-blocks-an-SM build 'u4b4')."""
    best = {}
    for c in row["cells"]:
        v = {"u4b4": "base/b4"}.get(c["variant"], c["variant"])
        if v not in best or c["rot_us"] < best[v]["rot_us"]:
            best[v] = c
    return best


def render(data: dict) -> list[str]:
    sweep, compare = data["sweep"], data["compare"]
    runs = data["runs"]
    out = ["# Few-row CUDA kernel: where the time goes, and the shipped picks before / after", "",
           report.GENERATED.format(name="gpu_gemv_cost"), "",
           f"Sweep, run {sweep['run']}: {runs[sweep['run']]['what']}", "",
           f"Before / after, run {compare['run']}: {runs[compare['run']]['what']}", "",
           "## Before / after (µs per call, graph replay, weights rotated through HBM; × = bf16 cuBLAS / this)", "",
           "| format | K×N | M | bf16 | before | after |", "|---|---|---|---|---|---|"]
    out += [f"| {r['fmt']} | {r['k']}×{r['n']} | {r['m']} | {r['bf16_us']:.1f} | {_pick(r, 'before')} | "
            f"{_pick(r, 'shipped')} |" for r in compare["rows"]]
    out += ["", "## Breakdown (int4 g128; fastest few-row config of each build, rotated / L2-resident µs)", "",
            "| K×N | M | 3 blocks an SM | 4 blocks an SM | no meeting along K | no activation-sum mma | "
            "no staged-group wait | without PDL |", "|---|---|---|---|---|---|---|---|"]
    for r in sweep["rows"]:
        if r["fmt"] == "int4":
            best = _fastest(r)
            out.append(f"| {r['k']}×{r['n']} | {r['m']} | " + " | ".join(
                f"{best[v]['rot_us']:.1f} / {best[v]['res_us']:.1f} ({best[v]['config'][5:]})" if v in best else "–"
                for v in ABLATIONS) + " |")
    out += ["", f"A trivial kernel in a CUDA graph: {sweep['floor_us']:.2f} µs.", "", "## Notes", ""]
    return out + [f"- {n}" for n in data.get("notes", [])]

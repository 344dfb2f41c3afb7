"""Markdown of benchmarks/results/gpu_wgmma_pipeline.json (python benchmarks/render.py gpu_wgmma_pipeline): the
CUDA kernel's many-row picks, the wgmma stage loop's builds side by side, and Nsight Compute of the picks."""
from __future__ import annotations

import report

BUILDS = (("shipped", "shipped"), ("in_flight", "in flight everywhere"), ("drained", "drained everywhere"))


def _best(row: dict, build: str, wg: bool | None = None) -> dict | None:
    cells = [c for c in row["cells"] if c["build"] == build and (wg is None or c["config"].startswith("wg") == wg)]
    return min(cells, key=lambda c: c["rot_us"]) if cells else None


def _cell(row: dict, c: dict | None, label: bool = True) -> str:
    if c is None:
        return "–"
    return (f"{c['config']} " if label else "") + f"{c['rot_us']:.1f} ({row['bf16_us'] / c['rot_us']:.2f}×)"


def render(data: dict) -> list[str]:
    sweep, runs = data["sweep"], data["runs"]
    out = ["# CUDA kernel, 16 to 256 rows: the wgmma stage loop and the shipped picks", "",
           report.GENERATED.format(name="gpu_wgmma_pipeline"), "",
           f"Sweep, run {sweep['run']}: {runs[sweep['run']]['what']}", "",
           "## Fastest config per build (µs per call, graph replay, weights rotated through HBM; × = bf16 cuBLAS / this)",
           "", "'table pick before' = the shipped table's pick before this run, timed in the shipped build; "
           "'fastest' = every candidate (mma tiles, few-row kernel, wgmma), shipped build; the wgmma columns: "
           "that kernel's fastest config in each build.", "",
           "| format | K×N | M | bf16 | table pick before | fastest | " + " | ".join(f"wgmma, {t}" for _, t in BUILDS) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(BUILDS)]
    for r in sweep["rows"]:
        before = next((c for c in r["cells"] if c["build"] == "shipped" and c["config"] == r.get("table_pick")), None)
        out.append(f"| {r['fmt']} | {r['k']}×{r['n']} | {r['m']} | {r['bf16_us']:.1f} | {_cell(r, before)} | "
                   f"{_cell(r, _best(r, 'shipped'))} | " + " | ".join(_cell(r, _best(r, b, True)) for b, _ in BUILDS) + " |")
    prof = data.get("profile")
    if prof:
        out += ["", f"## Nsight Compute, run {prof['run']}", "", runs[prof["run"]]["what"], "",
                "| K×N | M | config | grid × threads | µs | DRAM % | L2 % | SM % | SM active / elapsed cycles | "
                "achieved occupancy % (block limit: registers / shared memory) | cycles per issued instruction |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {p['k']}×{p['n']} | {p['m']} | {p['config']} | ({p['grid']}) × {p['threads']} | {p['duration_us']:.1f} | "
                f"{p['dram_pct']:.0f} | {p['l2_pct']:.0f} | {p['sm_pct']:.0f} | {p['sm_active_cycles']:,.0f} / "
                f"{p['elapsed_cycles']:,.0f} | {p['occupancy_pct']:.1f} ({p['limit_regs']:.0f} / {p['limit_smem']:.0f}) | "
                f"{p['issue_cycles']:.2f} |" for p in prof["rows"]]
    return out + _two_blocks(data) + ["", "## Notes", ""] + [f"- {n}" for n in data.get("notes", [])]


def _two_blocks(data: dict) -> list[str]:
    """Tile 3 (tile 2 at two blocks an SM): first as a build that capped every wgmma tile, then as a tile."""
    two, runs = data.get("two_blocks"), data["runs"]
    if not two:
        return []
    capped = {(r["fmt"], r["k"], r["n"], r["m"]): r for r in two["build_rows"]}
    out = ["", "## Two blocks an SM to 64 rows (tile 3)", "", f"Run {two['build_run']}: {runs[two['build_run']]['what']}",
           "", f"Run {two['tile_run']}: {runs[two['tile_run']]['what']}", "",
           "| format | K×N | M | bf16 | table pick before | fastest without tile 3 | tile 3 | "
           f"wgmma, build {two['build']} ({two['build_run']}) |", "|---|---|---|---|---|---|---|---|"]
    for r in two["tile_rows"]:
        before = next((c for c in r["cells"] if c["config"] == r.get("table_pick")), None)
        rest = min((c for c in r["cells"] if not c["config"].startswith("wg3:")), key=lambda c: c["rot_us"])
        tile3 = min((c for c in r["cells"] if c["config"].startswith("wg3:")), key=lambda c: c["rot_us"], default=None)
        other = capped.get((r["fmt"], r["k"], r["n"], r["m"]))
        build = _cell(other, _best(other, two["build"], True)) if other else "–"
        out.append(f"| {r['fmt']} | {r['k']}×{r['n']} | {r['m']} | {r['bf16_us']:.1f} | {_cell(r, before)} | "
                   f"{_cell(r, rest)} | {_cell(r, tile3)} | {build} |")
    return out

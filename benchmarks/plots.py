"""PNG plots drawn from the results JSON, beside their markdown (matplotlib: the ``bench`` extra).

Each function takes the loaded JSON and the PNG path, and draws only figures the JSON holds.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on the machines that render
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from quality_columns import COLUMNS, N_SAMPLES, ROWS, cell_key  # noqa: E402

# Left panel: the bit-width curve (asym int, 2 -> 3 -> 4 bits); right panel: the 4-bit settings,
# a line through the int4 ones (per-channel, g128 sym, g128 asym) and the codebooks as markers.
INT_CURVE = ["int2_g64_asym", "int3_g128_asym", "int4_g128_asym"]
INT4_CURVE = ["int4_pc_asym", "int4_g128_sym", "int4_g128_asym"]
MARKERS = {"nf4_g64": ("D", -0.004), "fp4_g64": ("P", 0.004)}  # same bytes: drawn a hair apart
MODEL_TITLES = {"smollm2": "SmolLM2-135M-Instruct (real weights)",
                "tinyllama-1.1b": "TinyLlama-1.1B shapes (random weights)"}


def bits(data: dict, column: str):
    size, weights = data.get("sizes", {}).get(column, {}), data.get("setup", {}).get("quantized_weights")
    return size["packed_mb"] * 1e6 * 8 / weights if weights and "packed_mb" in size else None


def algorithm_points(data: dict, row: str) -> dict:
    cells = data.get("cells", {})
    points = {c: (bits(data, c), cells.get(cell_key(row, c, N_SAMPLES), {}).get("ppl")) for c in COLUMNS}
    return {c: p for c, p in points.items() if None not in p}


def quality_plot(data: dict, path: Path) -> bool:
    fig, (wide, four) = plt.subplots(1, 2, figsize=(12, 5))
    colors = plt.get_cmap("tab20").colors
    drawn = False
    # a calibration-seed row repeats its algorithm's point (the spread of one quantization): not drawn
    for i, row in enumerate(r for r in ROWS if "calibration seed" not in r):
        points = algorithm_points(data, row)
        for ax, curve in ((wide, INT_CURVE), (four, INT4_CURVE)):
            line = sorted(points[c] for c in curve if c in points)
            if line:
                ax.plot(*zip(*line), "-o", color=colors[i % len(colors)], ms=4, label=row if ax is wide else None)
                drawn = True
        for c, (marker, dx) in MARKERS.items():
            if c in points:
                four.plot(points[c][0] + dx, points[c][1], marker, color=colors[i % len(colors)], ms=6)
    if not drawn:
        plt.close(fig)
        return False
    fp32 = data.get("cells", {}).get("fp32", {}).get("ppl")
    for ax in (wide, four):
        if fp32:
            ax.axhline(fp32, color="black", ls="--", lw=1, label=f"fp32 ({fp32:.2f})" if ax is wide else None)
        ax.set_xlabel("bits per weight (codes + scales + zero points of the quantized linears)")
        ax.grid(True, which="both", alpha=0.3)
    for c, (marker, _) in MARKERS.items():  # legend entries for the marker shapes
        four.plot([], [], marker, color="gray", label=COLUMNS[c]["label"] + " (same bits, drawn apart)")
    wide.set_yscale("log")
    wide.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    wide.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    wide.set_ylabel("perplexity, WikiText-2 test")
    wide.set_title("bit width: int2 g64, int3 g128, int4 g128 (asym); log scale", fontsize=9)
    four.set_title("4-bit settings: int4 per-channel asym, g128 sym, g128 asym; nf4 / fp4 g64", fontsize=9)
    wide.legend(fontsize=7)
    four.legend(fontsize=7)
    fig.suptitle("SmolLM2-135M-Instruct: perplexity against bits per weight, per algorithm (quality.md)", fontsize=10)
    return save(fig, path)


def gpu_plot(data: dict, path: Path) -> bool:
    """×bf16 (graph replay) against M, one panel per shape, for the run with the most layer rows."""
    layers = data.get("layers", [])
    if not layers:
        return False
    counts: dict = {}
    for r in layers:
        counts[r["run"]] = counts.get(r["run"], 0) + 1
    run = max(counts, key=counts.get)
    rows = [r for r in layers if r["run"] == run]
    shapes = list(dict.fromkeys((r["k"], r["n"]) for r in rows))
    kernels = list(dict.fromkeys(c for r in rows for c in r["cells"]))
    fig, axes = plt.subplots(1, len(shapes), figsize=(3.2 * len(shapes), 4), sharey=True, squeeze=False)
    colors = plt.get_cmap("tab20").colors  # one per row (13 rows)
    for ax, (k, n) in zip(axes[0], shapes):
        shape_rows = sorted((r for r in rows if (r["k"], r["n"]) == (k, n)), key=lambda r: r["m"])
        for i, name in enumerate(kernels):
            pts = [(r["m"], r["cells"][name]["x_bf16"]) for r in shape_rows if r["cells"].get(name, {}).get("x_bf16")]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=colors[i % 10], ls="--" if name.startswith("bf16") else "-",
                        lw=2 if name.startswith("ours") else 1, label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xticks(sorted({r["m"] for r in shape_rows}), [str(r["m"]) for r in shape_rows])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.set_title(f"{k}×{n}", fontsize=9)
        ax.set_xlabel("rows M")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("speed × bf16 cuBLAS (graph replay)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"GPU layer GEMM speed against bf16 cuBLAS (above 1×: faster), run {run} "
                 f"({data.get('setup', {}).get('gpu', '?')})", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save(fig, path, layout=False)


def cpu_plot(data: dict, path: Path) -> bool:
    """Decode tokens/s at batch 1 per model and row, llama.cpp beside SmolLM2."""
    models = data.get("models", {})
    names = list(dict.fromkeys(k.split("|")[0] for k in models))
    if not names:
        return False
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    lcpp = (data.get("llamacpp") or {}).get("decode_b1_tok_s")
    for ax, name in zip(axes[0], names):
        rows = [(k.split("|")[1], r["decode_b1_tok_s"]) for k, r in models.items()
                if k.startswith(name + "|") and "decode_b1_tok_s" in r]
        colors = ["#999999" if row in ("fp32", "bf16") else "#1f77b4" for row, _ in rows]
        if name == "smollm2" and lcpp:
            rows.append(("llama.cpp Q4_1", lcpp))
            colors.append("#d62728")
        bars = ax.bar([r for r, _ in rows], [v for _, v in rows], color=colors)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_title(MODEL_TITLES.get(name, name), fontsize=10)
        ax.set_ylabel("decode tokens/s, batch 1")
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("CPU decode speed (grey: float, blue: ours, red: llama.cpp); rows from the runs in cpu_speed.md",
                 fontsize=10)
    return save(fig, path)


def save(fig, path: Path, layout: bool = True) -> bool:
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


PLOTS = {"quality": quality_plot, "gpu_speed": gpu_plot, "cpu_speed": cpu_plot}

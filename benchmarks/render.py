"""Regenerate every benchmarks/results/*.md (and the plots beside them) from the JSON, running nothing.

    python benchmarks/render.py                 # every result file
    python benchmarks/render.py quality gpu_speed
    python benchmarks/render.py --check         # exit 1 if a markdown file differs from its JSON's rendering

Plots need matplotlib (``pip install .[bench]``); without it the markdown is still regenerated.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import batch_constrained_report  # noqa: E402
import batch_report  # noqa: E402
import cpu_speed_report  # noqa: E402
import demo_recipes_report  # noqa: E402
import gpu_gemv_report  # noqa: E402
import gpu_speed_report  # noqa: E402
import gpu_wgmma_report  # noqa: E402
import interop_report  # noqa: E402
import quality_peer_report  # noqa: E402
import quality_report  # noqa: E402
import rag_report  # noqa: E402
import report  # noqa: E402

try:  # optional: the bench extra
    from plots import PLOTS
except ImportError as exc:  # noqa: F841 - reported when plots are asked for
    PLOTS = None
    PLOTS_MISSING = str(exc)

# result name -> function(JSON) -> markdown lines
RENDERERS = {
    "quality": quality_report.render_quality,
    "quality_peer": quality_peer_report.render_peer,
    "cpu_speed": cpu_speed_report.render,
    "gpu_speed": gpu_speed_report.render,
    "gpu_gemv_cost": gpu_gemv_report.render,
    "gpu_wgmma_pipeline": gpu_wgmma_report.render,
    "batch": batch_report.render,
    "batch_constrained": batch_constrained_report.render,
    "interop": interop_report.render,
    "rag": rag_report.render,
    "demo_recipes": demo_recipes_report.render,
}


def render_one(name: str, plots: bool = True) -> list[str]:
    """Write ``name``.md (and its plot); return the paths written."""
    data = report.load(name)
    written = [str(report.write_markdown(name, RENDERERS[name](data)))]
    if plots and PLOTS is not None and name in PLOTS and PLOTS[name](data, report.path_of(name, ".png")):
        written.append(str(report.path_of(name, ".png")))
    return written


def stale(names) -> list[str]:
    """Markdown files whose text is not what their JSON renders to."""
    out = []
    for name in names:
        expected = "\n".join(RENDERERS[name](report.load(name))).rstrip("\n") + "\n"
        path = report.path_of(name, ".md")
        if not path.is_file() or path.read_text() != expected:
            out.append(str(path))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(RENDERERS), help=f"from: {', '.join(RENDERERS)}")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--check", action="store_true", help="only check that every markdown file is up to date")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in RENDERERS]
    if unknown:
        ap.error(f"unknown result {unknown}; choose from {', '.join(RENDERERS)}")
    if args.check:
        bad = stale(args.names)
        print("\n".join(f"stale: {p} (run python benchmarks/render.py)" for p in bad) or "every markdown file is up to date")
        return 1 if bad else 0
    if PLOTS is None and not args.no_plots:
        print(f"plots skipped: {PLOTS_MISSING} (pip install .[bench])")
    for name in args.names:
        print("wrote", ", ".join(render_one(name, plots=not args.no_plots)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

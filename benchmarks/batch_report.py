"""batch.md from batch.json: formatting only (batch.py measures)."""
from __future__ import annotations

import report

NAME = "batch"


def render(data: dict) -> list[str]:
    s, modes = data.get("setup", {}), data.get("modes", {})
    out = report.header(NAME, "Batch vs loop (benchmarks/batch.py)")
    out += [f"SmolLM2-135M-Instruct, RTN int4 g128 (kernels: {s.get('kernels', '?')}), CPU ({s.get('threads', '?')} "
            f"threads, {s.get('machine', '?')}), {s.get('prompts', '?')} prompts, max_new_tokens="
            f"{s.get('max_new_tokens', '?')}, greedy, batch_size={s.get('batch_size', '?')}, medians of "
            f"{s.get('repeats', '?')}.", ""]
    out += report.table(["mode", "median time (s)", "completion tokens", "tokens/s"],
                        [[mode, f"{m['median_s']:.2f}", f"{m['tokens']:.0f}", f"{m['tok_s']:.1f}"]
                         for mode, m in modes.items()])
    differing = data.get("differing") or []
    out += ["", f"Batch throughput / loop throughput: **{data['speedup']:.2f}x** (target >= 3x).",
            f"Batch outputs identical to the loop's: **{data['identical']}**"
            + ("" if data["identical"] else f" (differing prompts: {differing})") + ".",
            f"Peak RSS: {data['peak_rss_mib']:.0f} MiB. Model load + quantize: {data['load_s']:.1f} s.", ""]
    return out + report.runs_section(data) + report.notes_section(data)


def write_report(data: dict) -> str:
    return report.write_markdown(NAME, render(data)).read_text()

"""interop.md from interop.json: formatting only (interop.py measures)."""
from __future__ import annotations

import report

NAME = "interop"


def render(data: dict) -> list[str]:
    s = data.get("setup", {})
    out = report.header(NAME, "Interop round trips (SmolLM2-135M-Instruct)")
    out += [f"`python benchmarks/interop.py --windows {s.get('windows')} --seqlen {s.get('seqlen')}`: "
            f"{s.get('n_windows')} windows of {s.get('seqlen')} tokens from `wikitext2-test.txt`, all rows on the same "
            f"token ids in one run, CPU ({s.get('threads')} threads).", ""]
    out += report.table(["model", "perplexity", "note"], [[r["model"], f"{r['ppl']:.4f}", r.get("note", "")]
                                                          for r in data.get("rows", [])])
    out += [""] + report.table(["export", "seconds"], [[e["target"], f"{e['seconds']:.1f}"]
                                                      for e in data.get("exports", [])])
    return out + [""] + report.runs_section(data) + report.notes_section(data)


def write_report(data: dict) -> str:
    return report.write_markdown(NAME, render(data)).read_text()

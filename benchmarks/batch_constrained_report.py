"""batch_constrained.md from batch_constrained.json: formatting only (batch_constrained.py measures)."""
from __future__ import annotations

import report

NAME = "batch_constrained"


def render(data: dict) -> list[str]:
    s, results = data.get("setup", {}), data.get("results", {})
    out = report.header(NAME, "Constrained decoding rows (benchmarks/batch.py --constrained)")
    out += [f"SmolLM2-135M-Instruct, RTN int4 g128, CPU ({s.get('threads', '?')} threads, {s.get('machine', '?')}), "
            f"greedy. Fixed Pydantic schema `Landmark` (name, country, year, famous_for), prompts rendered as "
            f"`ChatQuant.with_structured_output` renders them ({s.get('prompt_tokens', '?')} tokens for the first); "
            f"free strings bounded to {s.get('max_string_chars', '?')} characters.", ""]
    v = results.get("validity")
    if v:
        n = v["prompts"]
        out += [f"Valid replies over {n} prompts (max_new_tokens={s.get('max_new_tokens', '?')}, 8 per batch): "
                f"constrained **{v['constrained']}/{n}** ({100 * v['constrained'] / n:.0f} %), "
                f"free **{v['free']}/{n}** ({100 * v['free'] / n:.0f} %).", ""]
    rows = [r for key, r in results.items() if key.startswith("batch ")]
    if rows:
        out += [f"Cost, medians of {s.get('repeats', '?')} (modes alternating), runs of {s.get('timed_tokens', '?')} "
                f"new tokens per row. End-to-end: completion tokens / wall time, prefill included. Decoding step: "
                f"(time of the run - time of a 1-token run) / (steps - 1). Target: <= 15 % tokens/s lost.", ""]
        out += report.table(
            ["batch", "free tok/s (e2e)", "constrained tok/s (e2e)", "lost (e2e)", "free ms/step",
             "constrained ms/step", "lost (decoding)", "load average (1 min) during"],
            [[r["batch"], f"{r['free']['e2e_tok_s']:.1f}", f"{r['constrained']['e2e_tok_s']:.1f}",
              f"{r['e2e_loss_pct']:.1f} %", f"{r['free']['step_ms']:.1f}", f"{r['constrained']['step_ms']:.1f}",
              f"{r['decode_loss_pct']:.1f} %", _load_range(r)] for r in rows])
        out.append("")
    loads = data.get("loads") or {}
    if loads:
        out += ["Load average (1, 5, 15 min): " + "; ".join(f"{k} {', '.join(f'{x:.1f}' for x in v)}"
                                                           for k, v in loads.items()) + ".", ""]
    if data.get("replies"):
        out += [f"Every reply is kept in `{NAME}.json` (`replies`).", ""]
    return out + report.notes_section(data) + report.runs_section(data)


def _load_range(row: dict) -> str:
    loads = [s["load"][0] for mode in ("free", "constrained") for s in row[mode]["samples"]]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "?"

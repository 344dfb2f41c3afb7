"""demo_recipes.md from demo_recipes.json: formatting only (demo_recipes.py measures)."""
from __future__ import annotations

import report

NAME = "demo_recipes"


def render(data: dict) -> list[str]:
    out = report.header(NAME, "Demo recipes on SmolLM2-135M-Instruct")
    out += ["Which recipe should `scripts/demo` show? Each recipe quantizes the embedded SmolLM2-135M-Instruct "
            "(fp32), saves it, reloads it packed and answers \"What is the capital of France?\" (chat template, "
            "greedy, 32 tokens): `python benchmarks/demo_recipes.py [NAME ...]`. The checkpoint size is the saved "
            "directory (packed codes, fp16 scales, the fp32 embedding and norms, the tokenizer).", ""]
    chosen = data.get("chosen")
    out += report.table(
        ["recipe", "saved checkpoint (MB)", "quantize (s)", "answer"],
        [[f"**{r['name']}** (the demo)" if r["name"] == chosen else r["name"], report.fmt(r["checkpoint_mb"], ".1f"),
          report.fmt(r["quantize_s"], ".1f"), r["answer"]] for r in data.get("rows", [])])
    return out + [""] + report.notes_section(data) + report.runs_section(data)

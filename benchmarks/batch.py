"""Batch versus loop through the LangChain provider: SmolLM2-135M int4 g128 on CPU.

16 fixed prompts, max_new_tokens=32, greedy. Times ``chain.batch(prompts)`` against a loop
of ``chain.invoke`` in the same process, alternating, medians of 3; prints tokens/s of
each, the speed-up, whether the batch's outputs equal the loop's, and peak RSS. Keeps them in
benchmarks/results/batch.json and generates batch.md from it.

``--constrained`` measures the constrained rows instead (benchmarks/batch_constrained.py: validity over
50 prompts with and without a schema, tokens/s at batch 1 and 8 with and without it) into
results/batch_constrained.json, and generates batch_constrained.md from it.

    python benchmarks/batch.py [--batch-size 16] [--repeats 3] [--max-new-tokens 32] [--constrained]
    python benchmarks/batch.py --constrained [--max-new-tokens 64] [--timed-tokens 16] [--prompts 50]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.prompts import PromptTemplate

from langchain_quant import QuantLLM
from quant_core import QuantConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
import batch_constrained  # noqa: E402 - same folder
import report  # noqa: E402 - same folder
from batch_constrained_report import NAME as CONSTRAINED_NAME  # noqa: E402 - same folder
from batch_constrained_report import render as render_constrained  # noqa: E402 - same folder
from batch_report import NAME, write_report  # noqa: E402 - same folder

QUESTIONS = [
    "What is electroencephalography?", "Why is the sky blue?", "How do vaccines work?",
    "What is the capital of Australia?", "Explain photosynthesis in one sentence.",
    "What does a compiler do?", "Who wrote Pride and Prejudice?", "What is a black hole?",
    "How many legs does a spider have?", "What is the boiling point of water?",
    "Why do leaves change colour in autumn?", "What is machine learning?",
    "Name three primary colours.", "What causes earthquakes?", "What is the speed of light?",
    "How does a refrigerator keep food cold?",
]
TEMPLATE = PromptTemplate.from_template("<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")


class CountTokens(BaseCallbackHandler):
    """Sums completion tokens reported in each generation's generation_info."""

    def __init__(self):
        self.tokens = 0

    def on_llm_end(self, response, **kwargs):
        self.tokens += sum(g.generation_info["completion_tokens"] for gens in response.generations for g in gens)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--constrained", action="store_true", help="the constrained-decoding rows instead")
    ap.add_argument("--timed-tokens", type=int, default=16, help="--constrained: new tokens per timed run")
    ap.add_argument("--prompts", type=int, default=50, help="--constrained: prompts in the validity run")
    args = ap.parse_args(argv)

    config = QuantConfig(weight_dtype="int4", group_size=128)
    t0 = time.perf_counter()
    llm = QuantLLM.from_model_id(None, task="text-generation", quantization_config=config,
                                 pipeline_kwargs={"max_new_tokens": args.max_new_tokens, "do_sample": False},
                                 batch_size=args.batch_size)
    load_s = time.perf_counter() - t0
    if args.constrained:
        return write_constrained(llm, args, load_s, argv)
    chain = TEMPLATE | llm
    inputs = [{"question": q} for q in QUESTIONS]
    chain.invoke(inputs[0])  # kernels are chosen and repacked on first use: keep that out of the timings
    kernels = sorted({m.kernel.name for m in llm.get_engine().model.modules() if getattr(m, "kernel", None)})

    times = {"batch": [], "loop": []}
    tokens = {"batch": [], "loop": []}
    outputs = {}
    for rep in range(args.repeats):
        for mode in (("batch", "loop") if rep % 2 == 0 else ("loop", "batch")):
            counter = CountTokens()
            start = time.perf_counter()
            if mode == "batch":
                out = chain.batch(inputs, config={"callbacks": [counter]})
            else:
                out = [chain.invoke(x, config={"callbacks": [counter]}) for x in inputs]
            times[mode].append(time.perf_counter() - start)
            tokens[mode].append(counter.tokens)
            outputs.setdefault(mode, out)
            print(f"  repeat {rep + 1} {mode}: {times[mode][-1]:.2f} s, {counter.tokens} tokens", flush=True)

    med = {m: statistics.median(t) for m, t in times.items()}
    tps = {m: statistics.median(tokens[m]) / med[m] for m in med}
    same = outputs["batch"] == outputs["loop"]
    differing = [i for i, (a, b) in enumerate(zip(outputs["batch"], outputs["loop"])) if a != b]
    data = {"runs": {}, "notes": [],
            "setup": {"kernels": ", ".join(kernels) or "none", "threads": torch.get_num_threads(),
                      "machine": platform.machine(), "prompts": len(QUESTIONS), "max_new_tokens": args.max_new_tokens,
                      "batch_size": args.batch_size, "repeats": args.repeats},
            "modes": {label: {"median_s": med[m], "tokens": statistics.median(tokens[m]), "tok_s": tps[m],
                              "times_s": times[m]} for label, m in (("chain.batch", "batch"),
                                                                     ("loop of chain.invoke", "loop"))},
            "speedup": tps["batch"] / tps["loop"], "identical": same, "differing": differing,
            "peak_rss_mib": peak_rss_mib(), "load_s": load_s}
    data["run"] = report.add_run(data, report.new_run(
        f"CPU, {os.cpu_count()} logical CPUs, load {os.getloadavg()[0]:.1f} at the end",
        "python benchmarks/batch.py " + " ".join(argv if argv is not None else sys.argv[1:])))
    report.save(NAME, data)
    print(write_report(data))
    return 0


def write_constrained(llm, args, load_s: float, argv) -> int:
    """The constrained rows, measured, kept in results/batch_constrained.json and rendered beside it."""
    max_new = max(args.max_new_tokens, 64)  # a whole Landmark object; 32, batch.py's default, is too short
    data = batch_constrained.measure(llm, args.repeats, max_new, args.timed_tokens, args.prompts)
    data["setup"].update(threads=torch.get_num_threads(), machine=platform.machine(), load_s=load_s)
    data.update(runs={}, notes=report.load(CONSTRAINED_NAME).get("notes", []))
    run = report.add_run(data, report.new_run(
        f"CPU, {os.cpu_count()} logical CPUs, load {os.getloadavg()[0]:.1f} at the end",
        "python benchmarks/batch.py " + " ".join(argv if argv is not None else sys.argv[1:])))
    for item in data["results"].values():
        item["run"] = run
    report.save(CONSTRAINED_NAME, data)
    text = report.write_markdown(CONSTRAINED_NAME, render_constrained(data)).read_text()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

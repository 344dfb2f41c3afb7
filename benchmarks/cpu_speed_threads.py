"""cpu_speed.py --threads-sweep: SmolLM2 int4 batch-1 decode against llama.cpp at several thread counts.

Each (ISA, threads) pair runs our model row and llama.cpp in their own child processes at that
thread count (the lean step by default, as a user gets it; --isa avx2 forces our AVX2 kernels and
PyTorch's AVX2 dispatch, while llama.cpp keeps its native build). The load average before each
child is kept beside its figure: on a shared machine it says how far to trust it.
"""
from __future__ import annotations

import argparse
import json
import os

ROWS = ("int4_sym", "int4_sym_head8")  # float head, and QuantConfig's default int8 head


def threads_sweep(args, run_child) -> dict:
    out = {}
    for threads in args.threads_sweep:
        targs = argparse.Namespace(**{**vars(args), "threads": threads, "rows": list(ROWS), "decode_batches": "1"})
        load_llamacpp = [round(x, 2) for x in os.getloadavg()]
        theirs = run_child("llamacpp", targs)  # one build, whatever --isa says: measured once per thread count
        for isa in args.isa:
            for row in ROWS:
                load = [round(x, 2) for x in os.getloadavg()]
                ours = run_child("model", targs, isa=isa, model="smollm2", row=row)
                entry = {"ours": ours.get("decode_b1_tok_s"), "ours_decoder": ours.get("decoder"),
                         "ours_kernels": ours.get("kernels"), "llamacpp": theirs.get("decode_b1_tok_s"),
                         "load_avg_ours": load, "load_avg_llamacpp": load_llamacpp,
                         "errors": [r["error"] for r in (ours, theirs) if "error" in r]}
                out[f"{isa}|{threads}|{row}"] = entry
                print(f"threads sweep {isa} {threads} {row}: {json.dumps(entry)}", flush=True)
    return out


def sweep_table(sweep) -> list[str]:
    if not sweep:
        return ["Not measured yet (a run with --threads-sweep)."]
    lines = [f"Run {sweep.get('run', '?')}. SmolLM2 int4 g128 with a float head (int4_sym) and with the default int8 "
             "head (int4_sym_head8), batch 1, medians; llama.cpp on the same model's Q4_1 GGUF with its native build, "
             "measured once per thread count.", "",
             "| as CPU | threads | row | ours tok/s | decoder, kernel | llama.cpp tok/s | ours / llama.cpp | "
             "1-min load avg (ours, llama.cpp) |", "|---|---|---|---|---|---|---|---|"]
    for key, r in sweep.items():
        if key == "run":
            continue
        isa, threads, row = key.split("|")
        ratio = f"{r['ours'] / r['llamacpp']:.2f}" if r.get("ours") and r.get("llamacpp") else "—"
        ours = f"{r['ours']:.1f}" if r.get("ours") else f"error: {'; '.join(r.get('errors', []))}"
        theirs = f"{r['llamacpp']:.1f}" if r.get("llamacpp") else "—"
        lines.append(f"| {isa} | {threads} | {row} | {ours} | {r.get('ours_decoder')}, {', '.join(r.get('ours_kernels') or [])} "
                     f"| {theirs} | {ratio} | {r['load_avg_ours'][0]}, {r['load_avg_llamacpp'][0]} |")
    return lines

"""Interop round trips on SmolLM2-135M-Instruct: perplexity of each on the same windows, in one run,
and export times.

  ours (RTN int4 sym g32)                      -> perplexity with quantllm
  ours -> GPTQ -> ours                         -> perplexity with quantllm (must equal ours)
  ours -> AWQ  -> ours                         -> perplexity with quantllm (must equal ours)
  ours -> GGUF Q4_0 -> llama.cpp               -> perplexity with llama-cpp-python on the same token ids
  embedded Q4_1 GGUF, dequantized (transformers) vs read packed (int4 asym g32, float minimums)

Usage: python benchmarks/interop.py [--windows 8] [--seqlen 512]
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quant_core import QuantConfig, quantize  # noqa: E402
from quant_core.evaluation import read_eval_text, windows  # noqa: E402
from quant_core.interop import export  # noqa: E402
from quant_core.loading import embedded_model_dir, embedded_model_path, load_model  # noqa: E402

import report  # noqa: E402 - benchmarks/
from interop_report import NAME, write_report  # noqa: E402 - benchmarks/

TEXT = ROOT.parent / "shared" / "data" / "wikitext2-test.txt"


@torch.no_grad()
def ppl_quantllm(model, batches) -> float:
    nll = 0.0
    for ids in batches:
        logits = model(ids[None], use_cache=False).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0, :-1], ids[1:]).item()
    return math.exp(nll / len(batches))


def ppl_llamacpp(gguf_path, batches, threads: int = 2) -> float:
    """Same windows, same token ids, scored by llama.cpp (llama-cpp-python, CPU)."""
    import numpy as np
    from llama_cpp import Llama

    seqlen = batches.shape[1]
    llm = Llama(str(gguf_path), n_ctx=seqlen, n_batch=seqlen, logits_all=True, n_threads=threads, verbose=False)
    nll = 0.0
    for ids in batches:
        llm.reset()
        llm.eval(ids.tolist())
        logits = torch.from_numpy(np.array(llm.scores[:seqlen], dtype=np.float32))
        nll += torch.nn.functional.cross_entropy(logits[:-1], ids[1:]).item()
    return math.exp(nll / len(batches))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    args = ap.parse_args()

    float_model, tok = load_model(embedded_model_dir())
    batches = windows(tok, read_eval_text(TEXT), args.seqlen, args.windows)
    rows, times = [], []

    def row(name, value, note=""):
        rows.append((name, value, note))
        print(f"{name}: perplexity {value:.4f} {note}", flush=True)

    row("float (transformers' dequantization of the embedded Q4_1 GGUF)", ppl_quantllm(float_model, batches))
    packed, _ = load_model(str(embedded_model_path()) + "#packed")
    row("embedded Q4_1 GGUF read packed (int4 asym g32, float minimums)", ppl_quantllm(packed, batches))
    del packed

    # a float head, as the stored rows were measured: every export then holds exactly our model
    ours = quantize(copy.deepcopy(float_model), QuantConfig(weight_dtype="int4", group_size=32, scheme="sym",
                                                            head_weight_dtype=None))
    del float_model
    base = ppl_quantllm(ours, batches)
    row("ours: RTN int4 sym g32 (quantllm)", base)
    with tempfile.TemporaryDirectory() as tmp:
        for target in ("gptq", "awq", "gguf"):
            out = Path(tmp) / (f"smollm2.{target}" if target != "gguf" else "smollm2-q4_0.gguf")
            opts = {"tokenizer_pre": "smollm", "progress": False} if target == "gguf" else {}
            start = time.perf_counter()
            export(ours, tok, out, target, **opts)
            seconds = time.perf_counter() - start
            times.append((target, seconds))
            print(f"export to {target}: {seconds:.1f} s", flush=True)
            if target == "gguf":
                try:
                    value = ppl_llamacpp(out, batches)
                except ImportError as exc:
                    print(f"llama.cpp round trip skipped: {exc}")
                    continue
                row("ours -> GGUF Q4_0 -> llama.cpp (llama-cpp-python)", value,
                    f"({100 * (value / base - 1):+.2f} % vs ours)")
            else:
                back, _ = load_model(out)
                value = ppl_quantllm(back, batches)
                row(f"ours -> {target.upper()} -> ours (quantllm)", value,
                    "(identical)" if value == base else f"({100 * (value / base - 1):+.4f} % vs ours)")
                del back

    data = {"runs": {}, "notes": [],
            "setup": {"windows": args.windows, "seqlen": args.seqlen, "n_windows": len(batches),
                      "threads": torch.get_num_threads()},
            "rows": [{"model": n, "ppl": v, "note": note} for n, v, note in rows],
            "exports": [{"target": t, "seconds": s} for t, s in times]}
    data["run"] = report.add_run(data, report.new_run(f"CPU ({torch.get_num_threads()} threads)",
                                                      "python benchmarks/interop.py " + " ".join(sys.argv[1:])))
    report.save(NAME, data)
    write_report(data)
    print(f"wrote {report.path_of(NAME, '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

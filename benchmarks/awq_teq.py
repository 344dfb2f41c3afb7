"""AWQ and TEQ against RTN on SmolLM2-135M, side by side in one run.

Perplexity on the first ``--windows`` windows of ``--seqlen`` tokens of WikiText-2 *test*
(calibration is the package's shipped WikiText-2 *validation* sample), for each weight
setting given; gap closed = (PPL_RTN - PPL_alg) / (PPL_RTN - PPL_fp32). Writes
``benchmarks/results/awq_teq.md``. The full algorithm table is ``benchmarks/quality.py``.

    python benchmarks/awq_teq.py                       # int4 g128 sym, 32 windows, CPU
    python benchmarks/awq_teq.py --settings int4:128:sym,int3:128:asym --device cuda
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch

from quant_core import QuantConfig, quantize
from quant_core.evaluation import perplexity, read_eval_text
from quant_core.loading import load_model

ROOT = Path(__file__).resolve().parent
DEFAULT_TEXT = ROOT.parent.parent / "shared" / "data" / "wikitext2-test.txt"


def parse_settings(text: str) -> list[tuple[str, int, str]]:
    out = []
    for item in text.split(","):
        dtype, group, scheme = item.split(":")
        out.append((dtype, int(group), scheme))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model source (default: the embedded SmolLM2 GGUF)")
    ap.add_argument("--text", default=str(DEFAULT_TEXT), help="evaluation text (WikiText-2 test)")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--n-samples", type=int, default=128, help="calibration windows")
    ap.add_argument("--settings", default="int4:128:sym", help="weight_dtype:group_size:scheme,...")
    ap.add_argument("--algorithms", default="rtn,awq,teq")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--kernel", default=None, help="force a kernel for the quantized forwards (e.g. reference)")
    ap.add_argument("--teq-steps", type=int, default=None, help="TEQ training steps per group (default: TEQ's)")
    ap.add_argument("--teq-lr", type=float, default=None, help="TEQ Adam learning rate (default: TEQ's)")
    ap.add_argument("--out", default=str(ROOT / "results" / "awq_teq.md"))
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False  # figures must not depend on the device's matmul precision

    model, tokenizer = load_model(args.model, device=args.device)
    text = read_eval_text(args.text)
    ppl = lambda m: perplexity(m, tokenizer, text, args.seqlen, args.windows, progress=False)  # noqa: E731
    fp32 = ppl(model)
    print(f"fp32: {fp32:.3f}", flush=True)
    rows = []
    for dtype, group, scheme in parse_settings(args.settings):
        results = {}
        for algorithm in args.algorithms.split(","):
            config = QuantConfig(algorithm=algorithm, weight_dtype=dtype, group_size=group, scheme=scheme,
                                 n_samples=args.n_samples, compute_dtype="fp32", kernel=args.kernel)
            extra = {k: v for k, v in (("steps", args.teq_steps), ("lr", args.teq_lr))
                     if v is not None and algorithm == "teq"}
            start = time.perf_counter()
            qmodel = quantize(copy.deepcopy(model), config, tokenizer=tokenizer, progress=False,
                              device=args.device, **extra)
            seconds = time.perf_counter() - start
            results[algorithm] = (ppl(qmodel), seconds)
            del qmodel
            print(f"{dtype} g{group} {scheme} {algorithm}: ppl {results[algorithm][0]:.3f} "
                  f"(quantize {seconds:.1f} s)", flush=True)
        rtn = results.get("rtn", (None,))[0]
        for algorithm, (value, seconds) in results.items():
            gap = (rtn - value) / (rtn - fp32) * 100 if rtn is not None and rtn != fp32 else float("nan")
            rows.append(f"| {dtype} g{group} {scheme} | {algorithm} | {value:.3f} | {gap:.1f} % | {seconds:.1f} |")
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    table = "\n".join([
        "# AWQ and TEQ vs RTN on SmolLM2-135M-Instruct",
        "",
        f"WikiText-2 test, first {args.windows} windows of {args.seqlen} tokens; calibration: "
        f"{args.n_samples} windows of 512 tokens of the shipped WikiText-2 valid sample (seed 0); "
        f"quantize device: {args.device} ({device}); fp32 perplexity **{fp32:.3f}**; "
        f"TEQ steps/lr: {args.teq_steps or 'default'}/{args.teq_lr or 'default'}.",
        "Gap closed = (PPL_RTN - PPL_alg) / (PPL_RTN - PPL_fp32).",
        "",
        "| setting | algorithm | perplexity | gap closed | quantize s |",
        "|---|---|---|---|---|",
        *rows, ""])
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)


if __name__ == "__main__":
    main()

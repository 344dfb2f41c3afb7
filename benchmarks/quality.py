"""Perplexity table for SmolLM2-135M-Instruct: fp32 versus RTN in every weight format.

    python benchmarks/quality.py               # first 32 windows of 512 tokens (16,384 tokens)
    python benchmarks/quality.py --windows 0   # every window (~560)

Prints a markdown table and writes it to benchmarks/results/quality.md. Columns: perplexity
on shared/data/wikitext2-test.txt, packed size of the quantized linears, size of the whole
saved checkpoint on disk, and quantize time.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = REPO.parent / "shared" / "data" / "wikitext2-test.txt"

# label -> QuantConfig fields (None: the float model). The embedded weights were stored as
# Q4_1 (int4 asym g32), so g32 asym int4 would reproduce them almost exactly: not a row here.
RTN_ROWS = {
    "fp32": None,
    "int8 per-channel": dict(weight_dtype="int8", group_size=-1),
    "int4_clip g128": dict(weight_dtype="int4_clip", group_size=128),
    "int4_fullrange g128 sym": dict(weight_dtype="int4_fullrange", group_size=128),
    "int4_fullrange g128 asym": dict(weight_dtype="int4_fullrange", group_size=128, scheme="asym"),
    "int4_fullrange per-channel": dict(weight_dtype="int4_fullrange", group_size=-1),
    "nf4 g64": dict(weight_dtype="nf4", group_size=64),
    "fp4_e2m1 g64": dict(weight_dtype="fp4_e2m1", group_size=64),
    "int3 g128 asym": dict(weight_dtype="int3", group_size=128, scheme="asym"),
    "int2 g64 asym": dict(weight_dtype="int2", group_size=64, scheme="asym"),
}


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def measure(model, tokenizer, text, fields, seqlen, windows) -> dict:
    """Quantize a copy of ``model`` with ``fields`` (None = float), save it, and measure it."""
    from quant_core import QuantConfig, quantize
    from quant_core.evaluation import perplexity
    from quant_core.inspect import packed_bytes
    from quant_core.serialization import save_quantized

    row = {"quant_s": None, "packed_mb": None}
    model = copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as tmp:
        if fields is None:
            model.save_pretrained(tmp)
        else:
            start = time.perf_counter()
            quantize(model, QuantConfig(**fields), progress=False)
            row["quant_s"] = time.perf_counter() - start
            row["packed_mb"] = packed_bytes(model) / 1e6
            save_quantized(model, tokenizer, Path(tmp) / "q")
        row["ckpt_mb"] = dir_mb(Path(tmp))
    row["ppl"] = perplexity(model, tokenizer, text, seqlen, windows, progress=False)
    return row


def fmt(value, spec):
    return "—" if value is None else format(value, spec)


def markdown(results: dict, windows_used: str, seqlen: int) -> str:
    lines = [f"SmolLM2-135M-Instruct (embedded Q4_1 GGUF, dequantized to fp32), wikitext2-test v1, "
             f"seqlen {seqlen}, {windows_used}; RTN; scales fp16; lm_head kept in float.", "",
             "| setting | perplexity | packed linears (MB) | checkpoint on disk (MB) | quantize time (s) |",
             "|---|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['ppl']:.2f} | {fmt(r['packed_mb'], '.2f')} | {r['ckpt_mb']:.1f} "
                     f"| {fmt(r['quant_s'], '.1f')} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", default=str(DEFAULT_TEXT), help="evaluation text (default: shared wikitext2-test)")
    p.add_argument("--windows", type=int, default=32, help="windows of --seqlen tokens; 0 = all")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--rows", nargs="*", default=list(RTN_ROWS), help="subset of row labels")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quality.md"))
    args = p.parse_args(argv)

    from quant_core.evaluation import read_eval_text, windows
    from quant_core.loading import load_model

    model, tokenizer = load_model()
    text = read_eval_text(args.text)
    n = windows(tokenizer, text, args.seqlen, args.windows or None).shape[0]
    results = {}
    for label in args.rows:
        results[label] = measure(model, tokenizer, text, RTN_ROWS[label], args.seqlen, args.windows or None)
        print(f"{label}: {results[label]}", flush=True)
    table = markdown(results, f"first {n} windows ({n * args.seqlen} tokens)", args.seqlen)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()

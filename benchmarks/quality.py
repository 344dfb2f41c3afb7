"""RTN in every weight setting on SmolLM2-135M-Instruct: perplexity (WikiText-2 test and legal-ood, from one
quantization), packed size, checkpoint size, quantize time.

    python benchmarks/quality.py                      # every setting; perplexity only where missing
    python benchmarks/quality.py --columns int8_pc_sym int4_pc_sym --force   # re-measure these cells

Sizes and times go to the ``sizes`` part of benchmarks/results/quality.json; the RTN
perplexity cells go to its ``cells``, the store that quality_algorithms.py fills for the
calibrated algorithms, so each figure exists once. A cell already in the store is kept
(it may come from another device) unless ``--force``; a cell lacking a text gets that text's
figure only. benchmarks/results/quality.md is regenerated from the JSON after every setting.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from quality_columns import ALL_COLUMNS, N_SAMPLES, SEQLEN, STORE, cell_key  # noqa: E402
from quality_report import write_quality  # noqa: E402
from quality_texts import TEXTS, evaluate, missing_texts, with_figure  # noqa: E402


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def measure_sizes(model, tokenizer, fields) -> tuple[dict, object]:
    """Quantize a copy with ``fields`` (None = the float model) and save it: sizes, time, the model."""
    from quant_core import QuantConfig, quantize
    from quant_core.inspect import packed_bytes
    from quant_core.serialization import save_quantized

    row = {}
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
    return row, model


def quantized_weights(model) -> int:
    """Weights the quantized settings pack (every linear but the lm_head, as quantize keeps it float)."""
    import torch

    return sum(m.weight.numel() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and "lm_head" not in n)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--columns", nargs="*", default=["fp32", *ALL_COLUMNS], choices=["fp32", *ALL_COLUMNS],
                   help="settings to measure (fp32: the float model's checkpoint size and perplexity)")
    p.add_argument("--force", action="store_true", help="re-measure perplexity cells already in the store")
    p.add_argument("--sizes-only", action="store_true", help="measure sizes and times, no perplexity")
    args = p.parse_args(argv)

    import torch

    from quality_texts import token_windows
    from quant_core.loading import load_model

    torch.backends.cuda.matmul.allow_tf32 = False
    model, tokenizer = load_model()
    windows = token_windows(tokenizer, TEXTS, SEQLEN)
    device = f"CPU x{os.cpu_count()} ({torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f} at start)"
    data = report.load(STORE)
    run_id = report.add_run(data, report.new_run(device, "python benchmarks/quality.py " + " ".join(argv or sys.argv[1:])))
    report.save(STORE, data)
    settings = [(c, None if c == "fp32" else ALL_COLUMNS[c]["quant_config"]) for c in args.columns]
    for column, fields in settings:
        sizes, qmodel = measure_sizes(model, tokenizer, fields)
        key = "fp32" if fields is None else cell_key("RTN", column, N_SAMPLES)
        cell = None if args.force else report.load(STORE).get("cells", {}).get(key)
        todo = [] if args.sizes_only else missing_texts(cell, TEXTS)
        report.put(STORE, "sizes", column, {**sizes, "run": run_id})
        report.put(STORE, "setup", "quantized_weights", quantized_weights(model))
        for name in todo:  # stored text by text: a run cut short keeps what it measured
            ppl = evaluate(qmodel, windows, [name], "cpu")[name]
            cell = with_figure(cell, name, ppl, run_id, **({"seconds": sizes["quant_s"]} if "quant_s" in sizes else {}))
            report.put(STORE, "cells", key, cell)
            print(f"{column} {name}: perplexity {ppl:.3f}", flush=True)
        print(f"{column}: {sizes}", flush=True)
        write_quality()


if __name__ == "__main__":
    main()

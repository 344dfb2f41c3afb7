"""Full quality table: fp32 | RTN | GPTQ | GPTQ act_order | AWQ | TEQ x the issue's seven settings.

    python benchmarks/quality_algorithms.py                      # every cell, 128 x 512 calibration
    python benchmarks/quality_algorithms.py --rows RTN,GPTQ      # some rows (finished cells are kept)
    python benchmarks/quality_algorithms.py --timing             # quantize time + peak RSS at int4 g128 (CPU)

Perplexity: SmolLM2-135M-Instruct, WikiText-2 test, seqlen 512, first 32 windows (the
convention of shared/data/README.md). Calibration: the shipped WikiText-2 *valid* sample,
``--n-samples`` windows of 512 tokens, seed 0, identical for every algorithm. Cells are
kept in ``benchmarks/results/quality.json`` (keyed by row, column and sample count; each names
its run: device, commit, date) so a run cut short keeps its figures and a later run fills in
the rest; ``benchmarks/results/quality.md`` is regenerated from it after every cell.
``--peer`` also runs our cells at the sample counts of the Neural Compressor table
(``quality_peer.json``) so that comparison is on identical inputs.
``--timing`` runs each algorithm at int4_fullrange g128 sym in its own subprocess on this
machine's CPU and records wall time and peak RSS (ru_maxrss) with the load average.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from quality_columns import COLUMNS, EVAL_FILE, ROWS, SEQLEN, STORE, WINDOWS, cell_key  # noqa: E402
from quality_peer_report import PEER  # noqa: E402
from quality_report import TIMING_COLUMN, write_quality  # noqa: E402


def load(args):
    import torch

    from quant_core.calibration import calibration_batches
    from quant_core.evaluation import read_eval_text
    from quant_core.loading import load_model

    torch.backends.cuda.matmul.allow_tf32 = False  # figures must not depend on the device's matmul precision
    model, tok = load_model(args.model)
    return model, tok, read_eval_text(args.text), calibration_batches


def quantize_cell(model, tok, batches, row: str, column: str, n_samples: int, device):
    from quant_core import QuantConfig, quantize

    cfg = QuantConfig(**COLUMNS[column]["quant_config"], **ROWS[row], n_samples=n_samples)
    start = time.perf_counter()
    q = quantize(copy.deepcopy(model), cfg, calibration=batches if cfg.algorithm != "rtn" else None,
                 tokenizer=tok, progress=False, device=device)
    return q, time.perf_counter() - start


def run_table(args) -> None:
    import torch

    from quant_core.evaluation import perplexity

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tok, text, calibration_batches = load(args)
    here = torch.cuda.get_device_name() + " (TF32 off)" if device.type == "cuda" else f"CPU x{os.cpu_count()}"
    data = report.load(STORE)
    run_id = report.add_run(data, report.new_run(here, "python benchmarks/quality_algorithms.py " + " ".join(args.argv)))
    report.save(STORE, data)
    if "fp32" not in data.get("cells", {}):
        value = perplexity(model.to(device), tok, text, SEQLEN, WINDOWS, progress=False)
        model.to("cpu")
        report.put(STORE, "cells", "fp32", {"ppl": value, "run": run_id})
    wanted = [(r, c, args.n_samples) for r in args.rows for c in args.columns]
    if args.peer:
        for key, res in report.load(PEER).get("results", {}).items():
            r, _, c = key.partition(":")
            if r != "RTN" and "n_samples" in res and res["n_samples"] != args.n_samples:
                wanted.append((r, c, res["n_samples"]))
    batches_by_n = {}
    for row, column, n in wanted:
        key = cell_key(row, column, n)
        if "ppl" in report.load(STORE).get("cells", {}).get(key, {}):
            continue
        if n not in batches_by_n:
            batches_by_n[n] = calibration_batches(tok, n_samples=n, seqlen=SEQLEN, seed=0, batch_size=args.batch)
        try:
            q, seconds = quantize_cell(model, tok, batches_by_n[n], row, column, n, device)
            cell = {"ppl": perplexity(q.to(device), tok, text, SEQLEN, WINDOWS, progress=False), "seconds": seconds}
            del q
        except Exception as exc:  # a cell that cannot run is a table entry, not a crashed run
            cell = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        report.put(STORE, "cells", key, {**cell, "run": run_id})
        print(f"{key}: {cell}", flush=True)
        write_quality()


def run_timing(args) -> None:
    """Each algorithm at int4 g128 sym in a fresh subprocess on this CPU: wall time, peak RSS."""
    data = report.load(STORE)
    run_id = report.add_run(data, report.new_run(f"CPU x{os.cpu_count()}", "python benchmarks/quality_algorithms.py "
                                                 + " ".join(args.argv)))
    report.save(STORE, data)
    for row in args.rows:
        load_avg = f"{os.getloadavg()[0]:.1f}"
        try:
            proc = subprocess.run([sys.executable, __file__, "--timing-one", row, "--n-samples",
                                   str(args.n_samples), "--model", args.model or "", "--batch", str(args.batch)],
                                  capture_output=True, text=True, timeout=args.cell_timeout)
        except subprocess.TimeoutExpired:
            result = {"error": f"did not finish within {args.cell_timeout} s (load {load_avg} at start)"}
        else:
            found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            result = ({**json.loads(found[-1][7:]), "load_start": load_avg, "load_end": f"{os.getloadavg()[0]:.1f}"}
                      if found else {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]})
        print(f"timing {row}: {result}", flush=True)
        report.put(STORE, "timing", row, {**result, "run": run_id})
        write_quality()


def timing_one(args) -> None:
    import torch

    model, tok, _, calibration_batches = load(args)
    batches = calibration_batches(tok, n_samples=args.n_samples, seqlen=SEQLEN, seed=0, batch_size=args.batch)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    _, seconds = quantize_cell(model, tok, batches, args.timing_one, TIMING_COLUMN, args.n_samples, "cpu")
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)  # contention-robust
    print("RESULT " + json.dumps({"seconds": seconds, "cpu_seconds": cpu_s, "threads": torch.get_num_threads(),
                                  "rss_before_gb": rss_before,
                                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                                  "n_samples": args.n_samples}), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated from: {', '.join(ROWS)}")
    p.add_argument("--columns", default=",".join(COLUMNS), help=f"comma-separated from: {', '.join(COLUMNS)}")
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--batch", type=int, default=8, help="calibration windows per forward (speed only)")
    p.add_argument("--model", default=None, help="model source for quant_core.loading.load_model (default: embedded)")
    p.add_argument("--text", default=EVAL_FILE)
    p.add_argument("--device", default=None, help="compute device (default: cuda if available)")
    p.add_argument("--peer", action="store_true", help="also run our cells at the peer table's sample counts")
    p.add_argument("--timing", action="store_true", help="measure quantize time and peak RSS on this CPU")
    p.add_argument("--cell-timeout", type=int, default=3000, help="--timing: seconds per algorithm")
    p.add_argument("--timing-one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = args.model or None
    args.rows, args.columns = args.rows.split(","), args.columns.split(",")
    bad = [r for r in args.rows if r not in ROWS] + [c for c in args.columns if c not in COLUMNS]
    if bad:
        raise SystemExit(f"unknown rows/columns {bad}; rows: {', '.join(ROWS)}; columns: {', '.join(COLUMNS)}")
    if args.timing_one:
        return timing_one(args)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    run_timing(args) if args.timing else run_table(args)
    write_quality()
    print(report.path_of(STORE, ".md").read_text())


if __name__ == "__main__":
    main()

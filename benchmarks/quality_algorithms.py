"""Full quality table: every algorithm row x every format column of quality_columns.py, on every text.

    python benchmarks/quality_algorithms.py                      # every cell, 128 x 512 calibration
    python benchmarks/quality_algorithms.py --rows RTN,GPTQ      # some rows (finished cells are kept)
    python benchmarks/quality_algorithms.py --timing             # quantize time + peak RSS at int4 g128 (CPU)

Perplexity: SmolLM2-135M-Instruct, seqlen 512, on every text of quality_texts.py from one
quantization per cell: WikiText-2 test, first 32 windows (the convention of shared/data/README.md),
and legal-ood.txt, every full window (out of domain, issue 16). Calibration: every field but the
format, the algorithm and ``--n-samples`` at QuantConfig's current defaults (the shipped sample,
512-token windows, seed 0), drawn by ``quantize`` as for a user, identical for every algorithm.
Cells are kept in ``benchmarks/results/quality.json`` (keyed by row, column and sample count, a
figure per text; each names its run: device, commit, date) so a run cut short keeps its figures
and a later run fills in the missing texts and cells; ``benchmarks/results/quality.md`` is
regenerated from it after every figure. ``benchmarks/quality_parallel.py`` runs the cells in
several processes on one GPU.
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
from quality_columns import COLUMNS, ROWS, SEQLEN, STORE, cell_key  # noqa: E402
from quality_peer_report import PEER  # noqa: E402
from quality_report import TIMING_COLUMN, write_quality  # noqa: E402
from quality_texts import (PRIMARY, TEXTS, evaluate, missing_texts, parse_selection, text_id,  # noqa: E402
                           token_windows, with_figure)


def load(args):
    import torch

    from quant_core.loading import load_model

    torch.backends.cuda.matmul.allow_tf32 = False  # figures must not depend on the device's matmul precision
    return load_model(args.model)


def cell_config(row: str, column: str, n_samples: int, seqlen: int | None = None):
    """The cell's QuantConfig: the column's format, the row's algorithm, every other field (calibration
    text, damping, ...) at the code's current default, so a changed default reaches the table."""
    from quant_core import QuantConfig

    fields = {**COLUMNS[column]["quant_config"], **ROWS[row], "n_samples": n_samples}
    return QuantConfig(**fields, **({"seqlen": seqlen} if seqlen else {}))


def quantize_cell(model, tok, row: str, column: str, n_samples: int, device, seqlen: int | None = None):
    from quant_core import quantize

    cfg = cell_config(row, column, n_samples, seqlen)
    start = time.perf_counter()  # calibration text drawn by quantize itself, as for a user (tokenizing: ~1 s)
    q = quantize(copy.deepcopy(model), cfg, tokenizer=tok, progress=False, device=device)
    return q, time.perf_counter() - start


def stored_cell(key: str):
    return report.load(STORE).get("cells", {}).get(key)


def evaluate_into(key: str, model, windows: dict, names, device, run_id: str, **extra) -> None:
    """Perplexity of ``model`` on each text of ``names``, stored in cell ``key`` after each text
    (a run cut short keeps what it measured)."""
    for name in names:
        ppl = evaluate(model, windows, [name], device)[name]
        report.put(STORE, "cells", key, with_figure(stored_cell(key), name, ppl, run_id, **extra))
        print(f"{key} {text_id(name)}: {ppl:.3f}", flush=True)


def measure_cell(model, tok, windows: dict, row: str, column: str, n: int, device, names, run_id: str,
                 force: bool = False, seqlen: int | None = None) -> None:
    """Quantize once, evaluate every text the stored cell lacks (all of ``names`` with ``force``)."""
    key = cell_key(row, column, n)
    cell = None if force else stored_cell(key)
    todo = list(names) if force else missing_texts(cell, names)
    if not todo:
        return
    if force:
        report.put(STORE, "cells", key, {})
    try:
        q, seconds = quantize_cell(model, tok, row, column, n, device, seqlen)
        evaluate_into(key, q, windows, todo, device, run_id, seconds=seconds)
        del q
    except Exception as exc:  # a cell that cannot run is a table entry, not a crashed run
        error = f"{type(exc).__name__}: {exc}"[:300]
        report.put(STORE, "cells", key, with_error(stored_cell(key), todo, error, run_id))
        print(f"{key}: error {error}", flush=True)
    write_quality()


def with_error(cell, names, error: str, run_id: str) -> dict:
    """The cell with ``error`` for each text of ``names`` it has no figure for (figures are kept)."""
    cell = dict(cell or {})
    for name in names:
        if name == PRIMARY and "ppl" not in cell:
            cell.update(error=error, run=run_id)
        elif name != PRIMARY:
            cell.setdefault("texts", {})[text_id(name)] = {"error": error, "run": run_id}
    return cell


def wanted_cells(args) -> list[tuple[str, str, int]]:
    wanted = [(r, c, args.n_samples) for r in args.rows for c in args.columns]
    if args.peer:
        for key, res in report.load(PEER).get("results", {}).items():
            r, _, c = key.partition(":")
            if r != "RTN" and "n_samples" in res and res["n_samples"] != args.n_samples:
                wanted.append((r, c, res["n_samples"]))
    return wanted


def run_table(args) -> None:
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tok = load(args)
    windows = token_windows(tok, args.texts, SEQLEN)
    here = torch.cuda.get_device_name() + " (TF32 off)" if device.type == "cuda" else f"CPU x{os.cpu_count()}"
    data = report.load(STORE)
    run_id = report.add_run(data, report.new_run(here, "python benchmarks/quality_algorithms.py " + " ".join(args.argv)))
    report.save(STORE, data)
    fp32_todo = list(args.texts) if args.force else missing_texts(stored_cell("fp32"), args.texts)
    evaluate_into("fp32", model, windows, fp32_todo, device, run_id)
    model.to("cpu")
    for row, column, n in wanted_cells(args):
        measure_cell(model, tok, windows, row, column, n, device, args.texts, run_id, args.force, args.seqlen)


def run_timing(args) -> None:
    """Each algorithm at int4 g128 sym in a fresh subprocess on this CPU: wall time, peak RSS."""
    data = report.load(STORE)
    run_id = report.add_run(data, report.new_run(f"CPU x{os.cpu_count()}", "python benchmarks/quality_algorithms.py "
                                                 + " ".join(args.argv)))
    report.save(STORE, data)
    for row in args.rows:
        load_avg = f"{os.getloadavg()[0]:.1f}"
        try:
            # --rows row: the default selection no longer parses there (a row name holds a comma)
            proc = subprocess.run([sys.executable, __file__, "--timing-one", row, "--rows", row, "--n-samples",
                                   str(args.n_samples), "--model", args.model or ""],
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

    model, tok = load(args)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    _, seconds = quantize_cell(model, tok, args.timing_one, TIMING_COLUMN, args.n_samples, "cpu", args.seqlen)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)  # contention-robust
    print("RESULT " + json.dumps({"seconds": seconds, "cpu_seconds": cpu_s, "threads": torch.get_num_threads(),
                                  "rss_before_gb": rss_before,
                                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                                  "n_samples": args.n_samples}), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated from: " + ", ".join(ROWS).replace("%", "%%"))
    p.add_argument("--columns", default=",".join(COLUMNS), help=f"comma-separated from: {', '.join(COLUMNS)}")
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--model", default=None, help="model source for quant_core.loading.load_model (default: embedded)")
    p.add_argument("--texts", default=",".join(TEXTS),
                   help=f"comma-separated evaluation texts from: {', '.join(TEXTS)} (quality_texts.py)")
    p.add_argument("--seqlen", type=int, default=None,
                   help="calibration window length (default: QuantConfig's, 512; smaller only for a smoke test)")
    p.add_argument("--force", action="store_true", help="re-measure cells already in the store, every text")
    p.add_argument("--device", default=None, help="compute device (default: cuda if available)")
    p.add_argument("--peer", action="store_true", help="also run our cells at the peer table's sample counts")
    p.add_argument("--timing", action="store_true", help="measure quantize time and peak RSS on this CPU")
    p.add_argument("--cell-timeout", type=int, default=3000, help="--timing: seconds per algorithm")
    p.add_argument("--timing-one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = args.model or None
    parse_selection(args, ROWS, COLUMNS)
    if args.timing_one:
        return timing_one(args)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    run_timing(args) if args.timing else run_table(args)
    write_quality()
    print(report.path_of(STORE, ".md").read_text())


if __name__ == "__main__":
    main()

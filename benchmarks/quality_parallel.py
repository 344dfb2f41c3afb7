"""The algorithm table in several processes on one GPU, within a wall-clock budget, most important cells first.

    python benchmarks/quality_parallel.py --model /tmp/m/smol.gguf --device cuda --workers 12 --budget 470 --out /tmp/q
    python benchmarks/quality_parallel.py --workers 2 --budget 300 --rows RTN,GPTQ --columns int4_g128_sym \\
        --n-samples 2 --seqlen 64 --windows 1 --out /tmp/q          # a smoke test on a CPU

Why processes: one SmolLM2 cell keeps an H200 mostly idle (the solvers launch small kernels one
column at a time), so several cells side by side share it well; each worker loads the model once
and keeps its figures in its own results folder (``QUANTLLM_RESULTS_DIR``), so nothing is shared
but the task queue: one file per cell, claimed by an atomic rename. A worker starts a cell only
if its estimated time fits before the deadline (else leaves it unclaimed for a later call), and
the launcher stops whatever still runs at the deadline. Then every worker's cells are merged into
``OUT/quality_cells.json`` (one results envelope, one run per worker), which quality_merge.py
folds into benchmarks/results/quality.json. ``--done FILE`` skips cells a previous call finished.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_columns import AWQ_CPU_DEFAULT_ROW, COLUMNS, ROWS, STORE, cell_key  # noqa: E402
from quality_texts import TEXTS, missing_texts, parse_selection  # noqa: E402

# The brief's order: the int4 g128 sym cells users meet first, then the issue-19 targets' settings.
FIRST = [("int4_g128_sym", ["RTN", "GPTQ", "GPTQ plain Hessian", "AWQ", "TEQ", "QuantEase", "GPTQ->QuantEase"]),
         ("int3_g128_asym", ["RTN", "GPTQ", "AWQ", "TEQ", "QuantEase", "GPTQ->QuantEase"]),
         ("int4_pc_asym", ["RTN", "GPTQ", "AWQ", "TEQ", "QuantEase", "GPTQ->QuantEase"]),
         ("int3_pc_asym", ["RTN", "QuantEase +1% outliers"])]
# Seconds per cell on an H200 with the GPU to itself (prior runs: RTN 3, AWQ 33, GPTQ 45, TEQ 96 s; the
# QuantEase rows scaled from GPTQ by kernel launches: GPTQ ~18 small ops per column once, QuantEase ~7 per
# column per sweep x 20 sweeps, ~12 us each), plus ~10 s for both texts' windows.
SECONDS = {"RTN": 15, "RTN fp32 scales": 15, "RTN int8 head": 15, "RTN int4 head": 15, "GPTQ": 60, "GPTQ plain Hessian": 60, "GPTQ act_order": 60, "GPTQ clip": 90,
           "GPTQ act_order clip": 90, "AWQ": 50, "TEQ": 110, "QuantEase": 250, "GPTQ->QuantEase": 290,
           "QuantEase +1% outliers": 280, "QuantEase +1% column outliers": 280,
           # calibration-speed rows (issue 19 part 5): as their fp32 rows; AWQ's search on fewer windows is shorter
           "GPTQ bf16 calibration": 60, "GPTQ no Hessian shrinkage bf16 calibration": 60, "AWQ bf16 calibration": 50, "AWQ bf16 calibration 16 search windows": 40,
           "AWQ bf16 calibration 8 search windows": 40, "QuantEase bf16 calibration": 250,
           "QuantEase +1% outliers (previous text)": 280, "AWQ calibration seed 1": 50, "AWQ calibration seed 2": 50, "AWQ no scale ridge": 50,
           # the MLP's search on every n-th token (session 13): as AWQ's, or shorter on fewer attention windows
           **{f"AWQ {windows}MLP token stride {stride}{seed}": seconds for stride, windows, seconds in (
               (16, "", 50), (16, "16 spread search windows ", 40), (32, "8 spread search windows ", 40))
              for seed in ("", " calibration seed 1", " calibration seed 2")},
           **{f"{AWQ_CPU_DEFAULT_ROW}{seed}": 40
              for seed in ("", " calibration seed 1", " calibration seed 2")},
           "TEQ calibration seed 1": 110, "TEQ calibration seed 2": 110, "TEQ scale ridge 0.3": 110,
           "TEQ held-out scale check": 110,
           # SignRound: 200 block forwards and backwards on 8 windows per block (estimated from TEQ's 200 steps
           # on one linear group's rows and GPTQ's forwards; not yet measured on the GPU), then by steps
           # (measured since: 100-240 s a cell with 4-6 cells on one H200)
           "SignRound": 200, "SignRound float-block target": 200, "SignRound 400 steps": 380,
           "SignRound 1000 steps": 900, "SignRound token-weighted": 200,
           # started from a solver's codes: SignRound's 200 plus the solver's (its Hessians and solve)
           "SignRound from GPTQ centre": 260, "SignRound from QuantEase centre": 450, "SignRound from GPTQ nearest": 260,
           "SignRound from GPTQ clip nearest": 290, "SignRound from QuantEase nearest": 450,
           "SignRound from QuantEase nearest 400 steps": 480, "SignRound from QuantEase nearest 1000 steps": 520,
           "SignRound from QuantEase nearest 16 windows a step": 480, "SignRound 16 windows a step": 230,
           # + scale tuning: the row's own time plus 128 whole-model forwards and backwards on 8 windows, a float
           # teacher pass and two evaluations (not yet measured on the GPU: about 60 s guessed, 200 s for 512 steps)
           "SignRound from QuantEase nearest + scale tuning": 510, "SignRound + scale tuning": 260,
           "GPTQ act_order clip + scale tuning": 150, "RTN + scale tuning": 75, "RTN + scale tuning CE": 75,
           "SignRound from QuantEase nearest + scale tuning 512 steps": 650,
           # measured with 5 cells on one H200 (run 2026-11-30T21:41): about 110 s more than the untuned row
           **{f"SignRound from QuantEase nearest + scale tuning calibration seed {i}": 370 for i in (1, 2)},
           **{f"SignRound + scale tuning calibration seed {i}": 260 for i in (1, 2)},
           "QuantEase +1% outliers + scale tuning": 390,
           # session 15: the untuned rows' estimates plus ~110 s of tuning (~440 s for 512 steps)
           "SignRound token-weighted + scale tuning": 310, "SignRound from QuantEase nearest token-weighted + scale "
           "tuning": 560, "SignRound + scale tuning 512 steps": 640,
           # GPTQ act_order + clip: 55-60 s a cell alone on the H200 (run az), ~110 s more tuned (run be)
           "GPTQ act_order clip Hessian shrinkage 0.5": 90, "GPTQ act_order clip Hessian shrinkage 0.5 + scale tuning": 200,
           # the defaults' rows plus ~110 s of tuning (run 2026-12-01T00:26: 124-163 s tuned GPTQ cells, 5 at once)
           "GPTQ + scale tuning": 170, "AWQ + scale tuning": 170, "TEQ + scale tuning": 230,
           "QuantEase + scale tuning": 370, "GPTQ->QuantEase + scale tuning": 400}


# A row without its own estimate (seeds, ablations) costs what its algorithm's default row costs.
BY_ALGORITHM = {"rtn": "RTN", "gptq": "GPTQ", "awq": "AWQ", "teq": "TEQ", "quantease": "QuantEase",
                "gptq_quantease": "GPTQ->QuantEase", "signround": "SignRound"}


def seconds(row: str) -> float:
    return SECONDS.get(row) or SECONDS[BY_ALGORITHM[ROWS[row]["algorithm"]]]


def ordered_cells(rows, columns, cells: str | None = None) -> list[tuple[str, str]]:
    """``cells`` ("row@column;...") exactly, in its order; else FIRST's cells (those asked for), then every
    other asked cell, longest first so the tail packs."""
    if cells:
        chosen = [tuple(c.split("@", 1)) for c in cells.split(";")]
        bad = [f"{r}@{c}" for r, c in chosen if r not in ROWS or c not in COLUMNS]
        if bad:
            raise SystemExit(f"unknown cells {bad}: a cell is 'row@column' with a row of ROWS and a column of COLUMNS")
        return chosen
    first = [(r, c) for c, rs in FIRST for r in rs if r in rows and c in columns]
    rest = [(r, c) for c in columns for r in rows if (r, c) not in first]
    return first + sorted(rest, key=lambda rc: -seconds(rc[0]))


def finished(done_files, n: int, texts) -> set:
    """Cells (row, column) that a previous call's merged JSON holds on every text."""
    out = set()
    for path in done_files:
        cells = json.loads(Path(path).read_text()).get("cells", {})
        out |= {(r, c) for r in ROWS for c in COLUMNS if not missing_texts(cells.get(cell_key(r, c, n)), texts)}
    return out


def write_queue(queue: Path, cells) -> None:
    queue.mkdir(parents=True, exist_ok=True)
    for i, (row, column) in enumerate(cells):
        (queue / f"{i:03d}.json").write_text(json.dumps({"row": row, "column": column}))


def claim(queue: Path, worker: int):
    """The next unclaimed task (renamed into claimed/, atomic against the other workers), or None."""
    claimed = queue.parent / "claimed"
    claimed.mkdir(exist_ok=True)
    for task in sorted(queue.glob("*.json")):
        target = claimed / f"{task.stem}-w{worker}.json"
        try:
            os.rename(task, target)
        except FileNotFoundError:
            continue  # another worker took it
        return target
    return None


def fits(task: dict, deadline: float, slowdown: float) -> bool:
    return task["row"] == "fp32" or time.time() + seconds(task["row"]) * slowdown < deadline


def work(args) -> None:
    """One worker: load the model once, then claim and measure cells until the queue is empty."""
    import torch

    import quality_algorithms as qa
    import report
    from quality_texts import token_windows

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, tok = qa.load(args)
    windows = token_windows(tok, args.texts, 512, args.windows)
    data = report.load(STORE)
    report.add_run(data, json.loads(args.run), run_id=args.run_id)
    report.save(STORE, data)
    queue = Path(args.out) / "queue"
    while (path := claim(queue, args.worker)) is not None:
        task = json.loads(path.read_text())
        if not fits(task, args.deadline, args.slowdown):
            os.replace(path, path.with_suffix(".skipped"))  # no time left for it: for a later call
            continue
        start = time.perf_counter()
        if task["row"] == "fp32":
            todo = missing_texts(qa.stored_cell("fp32"), args.texts)
            qa.evaluate_into("fp32", model, windows, todo, device, args.run_id)
            model.to("cpu")
        else:
            qa.measure_cell(model, tok, windows, task["row"], task["column"], args.n_samples, device, args.texts,
                            args.run_id, seqlen=args.seqlen)
        os.replace(path, path.with_suffix(".done"))
        print(f"[w{args.worker}] {task} {time.perf_counter() - start:.0f} s", flush=True)


def start_workers(args, run: dict, run_id: str) -> list[subprocess.Popen]:
    out = Path(args.out)
    procs = []
    for i in range(args.workers):
        env = {**os.environ, "QUANTLLM_RESULTS_DIR": str(out / f"w{i}"), "OMP_NUM_THREADS": str(args.threads),
               "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, __file__, "--worker", str(i), "--out", str(out), "--deadline", str(args.deadline),
               "--run", json.dumps(run), "--run-id", run_id, "--device", args.device, "--threads", str(args.threads),
               "--n-samples", str(args.n_samples), "--texts", ",".join(args.texts), "--slowdown", str(args.slowdown)]
        cmd += (["--model", args.model] if args.model else []) + (["--seqlen", str(args.seqlen)] if args.seqlen else [])
        cmd += ["--windows", str(args.windows)] if args.windows else []
        log = open(out / f"w{i}.log", "w")
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def wait_or_stop(procs, deadline: float) -> list[int]:
    """Wait for every worker until the deadline; stop (by process group) those still running then."""
    while time.time() < deadline and any(p.poll() is None for p in procs):
        time.sleep(1)
    stopped = [i for i, p in enumerate(procs) if p.poll() is None]
    for i in stopped:
        os.killpg(procs[i].pid, signal.SIGKILL)  # each worker leads its own session (start_new_session)
        procs[i].wait()
    return stopped


def merge_workers(out: Path, run_id: str, stopped: list[int]) -> dict:
    """Every worker's cells in one results envelope, with what was done, skipped and cut off."""
    merged = {"benchmark": STORE, "schema": 1, "runs": {}, "cells": {}}
    for store in sorted(out.glob("w*/quality.json")):
        data = json.loads(store.read_text())
        merged["runs"].update(data.get("runs", {}))
        merged["cells"].update(data.get("cells", {}))
    def names(folder: str, pattern: str) -> list[str]:
        tasks = [json.loads(p.read_text()) for p in sorted((out / folder).glob(pattern))]
        return [f"{t['row']}:{t.get('column', '-')}" for t in tasks]

    tasks = {"done": names("claimed", "*.done"), "skipped_no_time": names("claimed", "*.skipped"),
             "cut_off_at_deadline": names("claimed", "*.json"), "never_started": names("queue", "*.json")}
    merged["parallel"] = {"run": run_id, "stopped_workers": stopped, "tasks": tasks}
    (out / "quality_cells.json").write_text(json.dumps(merged, indent=1) + "\n")
    return merged


def launch(args) -> None:
    import report

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: give a new --out folder (the queue and the workers' stores live there)")
    start = time.time()
    cells = [c for c in ordered_cells(args.rows, args.columns, args.cells)
             if c not in finished(args.done, args.n_samples, args.texts)]
    write_queue(out / "queue", [("fp32", "-")] + cells)
    if args.model:  # a GGUF is dequantized and cached once here, not by every worker at once
        from quant_core.loading import load_model
        load_model(args.model)
    args.deadline = start + args.budget
    device = args.device
    if device.startswith("cuda"):
        import torch
        device = f"{torch.cuda.get_device_name()} (TF32 off), {args.workers} processes sharing it"
    run = report.new_run(device, "python benchmarks/quality_parallel.py " + " ".join(args.argv),
                         **({"commit": args.commit} if args.commit else {}),
                         **({"windows_override": args.windows} if args.windows else {}))
    run_id = report.add_run({}, run)
    print(f"{len(cells)} cells queued; workers start {time.time() - start:.0f} s after launch", flush=True)
    stopped = wait_or_stop(start_workers(args, run, run_id), args.deadline)
    merged = merge_workers(out, run_id, stopped)
    print(json.dumps(merged["parallel"], indent=1), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="an empty folder: queue, workers' stores and logs, the merged JSON")
    # the H200 host's 16 cores, not the GPU, limit: a GPTQ cell took ~50 s with 5 workers, ~200 s with 10
    p.add_argument("--workers", type=int, default=5)
    p.add_argument("--budget", type=float, default=470, help="seconds from launch until every worker is stopped")
    p.add_argument("--slowdown", type=float, default=1.5,
                   help="a cell starts only if SECONDS[row] x this fits before the deadline (the GPU is shared)")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--columns", default=",".join(COLUMNS))
    p.add_argument("--texts", default=",".join(TEXTS))
    p.add_argument("--cells", default=None, help="exactly these cells, in this order: 'row@column;row@column' "
                                                   "(instead of --rows x --columns)")
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=None, help="calibration windows (default QuantConfig's; smoke tests)")
    p.add_argument("--windows", type=int, default=None, help="evaluation windows per text (smoke tests only)")
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    p.add_argument("--done", action="append", default=[], help="a previous call's quality_cells.json: skip its cells")
    p.add_argument("--commit", default=None, help="the commit of the code that runs (where it is no git checkout)")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--run", default=None, help=argparse.SUPPRESS)
    p.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    parse_selection(args, ROWS, COLUMNS)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    work(args) if args.worker is not None else launch(args)


if __name__ == "__main__":
    main()

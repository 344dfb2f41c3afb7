"""Peer table: Intel Neural Compressor (``neural-compressor-pt``) RTN / GPTQ / AWQ / TEQ weight-only
on the same model, calibration windows, evaluation windows and settings as ``quality.py``.

Neural Compressor lives in its own environment so its torchao dependency never enters the
project's venv (transformers imports torchao whenever it is installed)::

    python -m venv .venv-peer   # with the project's python
    echo "$PWD/.venv/lib/python3.11/site-packages" > .venv-peer/lib/python3.11/site-packages/main_venv.pth
    .venv-peer/bin/pip install neural-compressor-pt==3.10
    nice .venv-peer/bin/python benchmarks/quality_peer.py --cells RTN:int4_g128_sym,GPTQ:int4_g128_sym

Each cell runs in its own subprocess (so a crash is a table entry, and peak RSS is the cell's
own); finished cells are kept in ``benchmarks/results/quality_peer.json`` and the table
``benchmarks/results/quality_peer.md`` is regenerated from it after every cell, so a run cut short by
its timeout still leaves every finished figure. A cell that cannot run says why.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from quality_columns import COLUMNS, EVAL_FILE, SEQLEN, WINDOWS  # noqa: E402
from quality_peer_report import PEER, PEER_ROWS, write_peer  # noqa: E402
DEFAULT_CELLS = ["RTN:int4_g128_sym", "GPTQ:int4_g128_sym", "GPTQ act_order:int4_g128_sym",
                 "RTN:int3_g128_asym", "GPTQ:int3_g128_asym", "AWQ:int4_g128_sym", "TEQ:int4_g128_sym"]


def nc_config(row: str, column: str, model=None, model_path: str = ""):
    import neural_compressor.torch.quantization as ncq

    args = dict(COLUMNS[column]["nc"])
    if row == "RTN":
        return ncq.RTNConfig(**args, use_full_range=True, use_layer_wise=False)
    if row.startswith("GPTQ"):
        # model_path: NC 3.10 resolves it even without layer-wise mode, and '' fails as a hub id
        return ncq.GPTQConfig(**args, act_order=row.endswith("act_order"), percdamp=0.01, block_size=128,
                              static_groups=False, true_sequential=True, model_path=model_path)
    if row == "AWQ":
        return ncq.AWQConfig(**args, use_full_range=True, use_auto_scale=True, use_auto_clip=True)
    if row == "TEQ":
        # NC's automatic absorb detection traces the model with torch.jit and finds nothing on
        # transformers 5; give it the norm -> linears pairs from our architecture table instead
        return ncq.TEQConfig(**args, use_full_range=True, folding=True, absorb_to_layer=absorb_map(model))
    raise ValueError(f"unknown row {row!r}; choose from {', '.join(PEER_ROWS)}")


def absorb_map(model) -> dict:
    """{producer: [linears reading its output]} for every group whose producer is a norm or a
    linear of matching width (as NC's own detector would report), per decoder block."""
    from quant_core.blocks import architecture_of, decoder_layers

    arch = architecture_of(model)
    out = {}
    for i, block in enumerate(decoder_layers(model, arch)):
        for group in arch.groups:
            if group.prev_op is None:
                continue
            prev = block.get_submodule(group.prev_op)
            width = getattr(prev, "out_features", None) or prev.weight.shape[0]
            if width != block.get_submodule(group.names[0]).in_features:
                continue  # grouped-query v_proj -> o_proj cannot absorb a per-channel scale
            prefix = f"{arch.layers}.{i}."
            out[prefix + group.prev_op] = [prefix + n for n in group.names]
    return out


def teq_train(model, batches, steps: int, lr: float = 1e-3):
    """Intel's TEQ recipe: Adam on the equivalent-transformation scales, LM loss on calibration data."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("Neural Compressor's TEQ prepared no trainable scales for this model")
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for step in range(steps):
        ids = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def run_cell(row: str, column: str, n_samples: int, teq_steps: int, device: str = "cpu") -> dict:
    """Quantize with Neural Compressor and measure perplexity (inside the cell's subprocess).

    ``device``: Neural Compressor picks its accelerator itself (``INC_TARGET_DEVICE``, set by
    ``main``); the model and calibration batches start there so its captured inputs match.
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # as ours: figures must not depend on matmul precision
    from neural_compressor.torch.quantization import convert, prepare

    from quant_core.calibration import calibration_batches
    from quant_core.evaluation import perplexity, read_eval_text
    from quant_core.loading import embedded_model_dir, load_model

    torch.manual_seed(0)
    model, tok = load_model()
    model.to(device)
    batches = [b.to(device) for b in calibration_batches(tok, n_samples=n_samples, seqlen=SEQLEN, seed=0,
                                                         batch_size=1)]
    config = nc_config(row, column, model, str(embedded_model_dir()))
    start = time.perf_counter()
    example = batches[0]
    if row == "RTN":
        model = convert(prepare(model, config))
    elif row == "TEQ":
        model = prepare(model, config, example_inputs=example)
        teq_train(model, batches, teq_steps)
        model = convert(model)
    else:
        model = prepare(model, config, example_inputs=example) if row == "AWQ" else prepare(model, config)
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids, use_cache=False)
        model = convert(model)
    seconds = time.perf_counter() - start
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    model.to(device)  # some algorithms hand the model back on the CPU
    ppl = perplexity(model, tok, read_eval_text(EVAL_FILE), SEQLEN, WINDOWS, progress=False)
    return {"ppl": ppl, "seconds": seconds, "peak_rss_gb": rss_gb}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_name() + " (TF32 off)"
    return f"CPU x{os.cpu_count()}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default=",".join(DEFAULT_CELLS),
                   help="comma-separated ROW:COLUMN cells, in the order to run; 'all' for every cell")
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--row-samples", default="AWQ=8,TEQ=8",
                   help="per-row calibration sample counts overriding --n-samples (AWQ/TEQ search and "
                        "train on every sample, which is hours on 2 cores at 128)")
    p.add_argument("--teq-steps", type=int, default=50)
    p.add_argument("--cell-timeout", type=int, default=3600, help="seconds before a cell is abandoned")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where Neural Compressor runs (perplexity "
                   "figures do not depend on it beyond float rounding; TF32 stays off)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run a single cell, print JSON
    args = p.parse_args(argv)
    if args.one:
        row, column = args.one.split(":")
        print("RESULT " + json.dumps(run_cell(row, column, args.n_samples, args.teq_steps, args.device)), flush=True)
        return
    import importlib.metadata as md
    cells = [f"{r}:{c}" for r in PEER_ROWS for c in COLUMNS] if args.cells == "all" else args.cells.split(",")
    for cell in cells:
        row, _, col = cell.partition(":")
        if row not in PEER_ROWS or col not in COLUMNS:
            raise SystemExit(f"unknown cell {cell!r}: rows {', '.join(PEER_ROWS)}; columns {', '.join(COLUMNS)}")
    data = report.load(PEER)
    if data.get("setup", {}).get("n_samples") != args.n_samples:
        data["results"] = {}  # cells at another calibration size are not comparable: start the table anew
    os.environ["INC_TARGET_DEVICE"] = args.device
    row_samples = {k: int(v) for k, v in (x.split("=") for x in args.row_samples.split(",") if x)}
    data["setup"] = {"nc_version": md.version("neural-compressor-pt"), "torch": md.version("torch"),
                     "n_samples": args.n_samples, "teq_steps": args.teq_steps, "device": device_name(args.device),
                     "row_samples": row_samples}
    run_id = report.add_run(data, report.new_run(device_name(args.device), "python benchmarks/quality_peer.py "
                                                 + " ".join(argv or sys.argv[1:])))
    results = data.setdefault("results", {})
    for cell in cells:
        if cell in results and "ppl" in results[cell]:
            continue
        load = f"{os.getloadavg()[0]:.1f}"
        n = row_samples.get(cell.partition(":")[0], args.n_samples)
        print(f"[peer] {cell} (load {load}, {n} samples) ...", flush=True)
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", cell, "--n-samples", str(n),
                                   "--teq-steps", str(args.teq_steps), "--device", args.device],
                                  capture_output=True, text=True, timeout=args.cell_timeout)
            found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if found:
                results[cell] = {**json.loads(found[-1][7:]), "load": load, "n_samples": n, "run": run_id}
            else:
                results[cell] = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "run": run_id}
        except subprocess.TimeoutExpired:
            results[cell] = {"error": f"did not finish within {args.cell_timeout} s on this shared CPU", "run": run_id}
        print(f"[peer] {cell}: {results[cell]}", flush=True)
        report.save(PEER, data)
        write_peer()


if __name__ == "__main__":
    main()

"""Peer table: Intel Neural Compressor (``neural-compressor-pt``) RTN / GPTQ / AWQ / TEQ weight-only, GPTQModel's
GPTQ (``peer_gptqmodel.py``) and AutoRound (``peer_autoround.py``) on the same model, calibration windows,
evaluation windows and settings as ``quality_algorithms.py``: every cell on WikiText-2 test and legal-ood
(quality_texts.py) from one quantization. GPTQModel and AutoRound save GPTQ checkpoints that quantllm's
GPTQ import loads without touching a float weight, so their figures come from the same forward code too.

    .venv/bin/python benchmarks/quality_peer.py --cells "GPTQModel GPTQ:int4_g128_sym"     # this CPU
    python benchmarks/quality_peer.py --cells AutoRound:int4_g128_sym --device cuda --model smol.gguf

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
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from quality_columns import COLUMNS, N_SAMPLES, SEQLEN  # noqa: E402
from quality_peer_report import NC_ROWS, PEER, PEER_RECIPES, PEER_ROWS, write_peer  # noqa: E402
from quality_texts import PRIMARY, TEXTS, missing_texts, text_id  # noqa: E402
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


def calibration_windows(tok, n_samples: int, seqlen: int | None = None):
    """The windows our algorithms calibrate on: QuantConfig's current defaults (source, seed) at ``n_samples``."""
    from quant_core import QuantConfig
    from quant_core.calibration import batches_from_config

    return batches_from_config(tok, QuantConfig(n_samples=n_samples, **({"seqlen": seqlen} if seqlen else {})))


def nc_quantize(row: str, column: str, model, tok, n_samples: int, teq_steps: int, device: str):
    """Neural Compressor in place of ``model`` (its own prepare/convert), on our windows one at a time."""
    from neural_compressor.torch.quantization import convert, prepare

    from quant_core.loading import embedded_model_dir

    batches = [w.unsqueeze(0).to(device) for b in calibration_windows(tok, n_samples) for w in b]
    config = nc_config(row, column, model, str(embedded_model_dir()))
    if row == "RTN":
        return convert(prepare(model, config))
    if row == "TEQ":
        model = prepare(model, config, example_inputs=batches[0])
        teq_train(model, batches, teq_steps)
        return convert(model)
    model = prepare(model, config, example_inputs=batches[0]) if row == "AWQ" else prepare(model, config)
    import torch
    with torch.no_grad():
        for ids in batches:
            model(input_ids=ids, use_cache=False)
    return convert(model)


def checkpoint_quantize(row: str, column: str, source, tok, n_samples: int, device: str, seqlen=None, iters=None):
    """GPTQModel or AutoRound: quantize the float model's folder, save a GPTQ checkpoint, load it with quantllm."""
    import tempfile

    import peer_autoround
    import peer_gptqmodel
    from quant_core.loading import embedded_model_dir, gguf_cache_path, load_model

    model_dir = str(gguf_cache_path(Path(source)) if source else embedded_model_dir())
    peer = peer_gptqmodel if row == "GPTQModel GPTQ" else peer_autoround
    iters = iters or PEER_RECIPES.get(row, {}).get("iters")
    with tempfile.TemporaryDirectory() as out:
        settings = peer.quantize(model_dir, column, calibration_windows(tok, n_samples, seqlen), out, device,
                                 **({"iters": iters} if iters else {}))
        checkpoint = next(Path(out).rglob("config.json")).parent  # AutoRound saves into a named subfolder
        model, _ = load_model(str(checkpoint), device=device)
    return model, settings


def run_cell(row: str, column: str, n_samples: int, teq_steps: int, device: str = "cpu", source=None,
             seqlen=None, iters=None) -> dict:
    """Quantize with the peer and measure perplexity on every text (inside the cell's subprocess).

    ``device``: Neural Compressor picks its accelerator itself (``INC_TARGET_DEVICE``, set by
    ``main``); the model and calibration batches start there so its captured inputs match.
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # as ours: figures must not depend on matmul precision
    from quality_texts import evaluate, token_windows
    from quant_core.loading import load_model

    torch.manual_seed(0)
    model, tok = load_model(source)
    windows = token_windows(tok, TEXTS, SEQLEN)
    start = time.perf_counter()
    settings = {}
    if row in NC_ROWS:
        model = nc_quantize(row, column, model.to(device), tok, n_samples, teq_steps, device)
    else:
        model, settings = checkpoint_quantize(row, column, source, tok, n_samples, device, seqlen, iters)
    seconds = time.perf_counter() - start
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    ppl = evaluate(model, windows, TEXTS, device)  # some algorithms hand the model back on the CPU
    return {"ppl": ppl[PRIMARY], "texts": {text_id(t): {"ppl": ppl[t]} for t in TEXTS if t != PRIMARY},
            "seconds": seconds, "peak_rss_gb": rss_gb, **({"settings": settings} if settings else {})}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_name() + " (TF32 off)"
    return f"CPU x{os.cpu_count()}"


LIBRARIES = {"GPTQModel GPTQ": "gptqmodel", "AutoRound": "auto-round", **{r: "auto-round" for r in PEER_RECIPES},
             **{r: "neural-compressor-pt" for r in NC_ROWS}}


def library_versions(rows) -> dict:
    import importlib.metadata as md

    versions = {"torch": md.version("torch"), "transformers": md.version("transformers")}
    for name in sorted({LIBRARIES[r] for r in rows}):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_one(args, cell: str, n: int, run_id: str) -> dict:
    """One cell in its own subprocess (a crash or a hang is a table entry)."""
    load = f"{os.getloadavg()[0]:.1f}"
    print(f"[peer] {cell} (load {load}, {n} samples) ...", flush=True)
    cmd = [sys.executable, __file__, "--one", cell, "--n-samples", str(n), "--teq-steps", str(args.teq_steps),
           "--device", args.device] + (["--model", args.model] if args.model else []) + \
        (["--seqlen", str(args.seqlen)] if args.seqlen else []) + (["--iters", str(args.iters)] if args.iters else [])
    try:
        # --cell-log: a long cell's progress is readable while it runs, which a pipe's is not
        with open(args.cell_log, "w") if args.cell_log else contextlib.nullcontext() as log:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log or subprocess.PIPE, text=True,
                                  timeout=args.cell_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {args.cell_timeout} s on {device_name(args.device)}", "run": run_id}
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if found:
        return {**json.loads(found[-1][7:]), "load": load, "n_samples": n, "run": run_id}
    stderr = Path(args.cell_log).read_text() if args.cell_log else proc.stderr
    return {"error": (stderr.strip().splitlines() or ["no output"])[-1], "run": run_id}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default=",".join(DEFAULT_CELLS),
                   help="comma-separated ROW:COLUMN cells, in the order to run; 'all' for every cell")
    p.add_argument("--n-samples", type=int, default=N_SAMPLES)
    p.add_argument("--row-samples", default="AWQ=8,TEQ=8",
                   help="per-row calibration sample counts overriding --n-samples (Neural Compressor's AWQ/TEQ "
                        "search and train on every sample, which is hours on 2 cores at 128)")
    p.add_argument("--teq-steps", type=int, default=50)
    p.add_argument("--cell-timeout", type=int, default=3600, help="seconds before a cell is abandoned")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the peer runs (perplexity "
                   "figures do not depend on it beyond float rounding; TF32 stays off)")
    p.add_argument("--model", default=None, help="model source (default: the embedded SmolLM2; a .gguf on a GPU machine)")
    p.add_argument("--seqlen", type=int, default=None, help="calibration window length (smoke tests only)")
    p.add_argument("--iters", type=int, default=None, help="AutoRound iterations in place of the row's (smoke tests only)")
    p.add_argument("--cell-log", default=None, help="file for the running cell's log (its stderr), to watch a long cell")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run a single cell, print JSON
    args = p.parse_args(argv)
    if args.one:
        row, column = args.one.split(":")
        print("RESULT " + json.dumps(run_cell(row, column, args.n_samples, args.teq_steps, args.device, args.model,
                                              args.seqlen, args.iters)), flush=True)
        return
    cells = [f"{r}:{c}" for r in PEER_ROWS for c in COLUMNS] if args.cells == "all" else args.cells.split(",")
    for cell in cells:
        row, _, col = cell.partition(":")
        if row not in PEER_ROWS or col not in COLUMNS:
            raise SystemExit(f"unknown cell {cell!r}: rows {', '.join(PEER_ROWS)}; columns {', '.join(COLUMNS)}")
    data = report.load(PEER)
    os.environ["INC_TARGET_DEVICE"] = args.device
    row_samples = {r: recipe["n_samples"] for r, recipe in PEER_RECIPES.items()}
    row_samples.update({k: int(v) for k, v in (x.split("=") for x in args.row_samples.split(",") if x)})
    rows = {c.partition(":")[0] for c in cells}
    setup = data.setdefault("setup", {})
    setup.setdefault("versions", {}).update(library_versions(rows))
    if rows & set(NC_ROWS):  # Neural Compressor's own settings, as its table states them
        setup.update(n_samples=args.n_samples, teq_steps=args.teq_steps, device=device_name(args.device),
                     row_samples=row_samples, nc_version=setup["versions"]["neural-compressor-pt"])
    run_id = report.add_run(data, report.new_run(device_name(args.device), "python benchmarks/quality_peer.py "
                                                 + " ".join(argv or sys.argv[1:])))
    results = data.setdefault("results", {})
    for cell in cells:
        n = row_samples.get(cell.partition(":")[0], args.n_samples)
        if results.get(cell, {}).get("n_samples", n) == n and not missing_texts(results.get(cell), TEXTS):
            continue  # measured on every text at this sample count
        results[cell] = run_one(args, cell, n, run_id)
        print(f"[peer] {cell}: {results[cell]}", flush=True)
        report.save(PEER, data)
        write_peer()


if __name__ == "__main__":
    main()

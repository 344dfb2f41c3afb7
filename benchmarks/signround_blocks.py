"""Per-block evidence for SignRound on SmolLM2's first blocks: each block's output error and seconds.

    python benchmarks/signround_blocks.py                       # 3 blocks, 32 x 512 calibration windows
    python benchmarks/signround_blocks.py --blocks 2 --columns int4_g128_sym --rows RTN,SignRound

For every row (an algorithm and its settings, at every other field's default) the model is cut to its
first ``--blocks`` + 1 blocks and calibrated through the shared driver; around each block's step it
records, on the block's own (quantized-predecessor) calibration inputs:

* ``local``: the mean squared error of the quantized block's outputs against the float block's on the
  same inputs (what GPTQ and SignRound's default minimise);
* ``model``: against the float model's hidden states after that block (the error carried so far);
* ``model_weighted``: the same with each token's error divided by its float hidden state's mean square
  (what the next RMSNorm sees; ``signround_token_weighting``);
* ``seconds``: wall time of the step (statistics, solving, installing; not these measurements).

The outputs are read where the driver computes them (the next block's inputs), so a step's replayed
sub-modules are undisturbed. Prints one JSON line per (row, column) and a table; writes nothing.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_columns import COLUMNS  # noqa: E402

from quant_core import QuantConfig  # noqa: E402
from quant_core.algorithms.driver import calibrate  # noqa: E402
from quant_core.algorithms.gptq import gptq_step  # noqa: E402
from quant_core.algorithms.quantease import quantease_step  # noqa: E402
from quant_core.algorithms.rtn import rtn  # noqa: E402
from quant_core.algorithms.signround import output_loss, signround_step  # noqa: E402
from quant_core.calibration import forward_precision  # noqa: E402
from quant_core.loading import load_model  # noqa: E402


def rtn_step(block) -> None:
    block.install({name: rtn(block.module.get_submodule(name).weight, block.config)
                   for group in block.linear_groups() for name in group})


ROWS = {"RTN": (rtn_step, dict(algorithm="rtn")), "GPTQ": (gptq_step, dict(algorithm="gptq")),
        "QuantEase": (quantease_step, dict(algorithm="quantease")),
        "SignRound": (signround_step, dict(algorithm="signround")),  # float-model target since session 9
        "SignRound float-block target": (signround_step, dict(algorithm="signround", signround_target="float_block")),
        "SignRound token-weighted": (signround_step, dict(algorithm="signround", signround_token_weighting=True)),
        "SignRound float-block target token-weighted": (signround_step, dict(
            algorithm="signround", signround_target="float_block", signround_token_weighting=True)),
        "SignRound from GPTQ": (signround_step, dict(algorithm="signround", signround_start="gptq")),
        "SignRound from GPTQ clip nearest": (signround_step, dict(
            algorithm="signround", signround_start="gptq", mse_clip=True, signround_start_offset="nearest")),
        "SignRound from QuantEase": (signround_step, dict(algorithm="signround", signround_start="quantease")),
        "SignRound from GPTQ nearest": (signround_step, dict(algorithm="signround", signround_start="gptq",
                                                             signround_start_offset="nearest")),
        "SignRound from QuantEase nearest": (signround_step, dict(
            algorithm="signround", signround_start="quantease", signround_start_offset="nearest"))}


def mse(outputs: list[torch.Tensor], targets: list[torch.Tensor], token_weighting: bool = False) -> float:
    total = sum(output_loss(o, t, token_weighting).item() * t.numel() for o, t in zip(outputs, targets))
    return total / sum(t.numel() for t in targets)


def measured(step, blocks: int, records: list[dict]):
    """``step`` with each block's targets taken before it and its outputs read at the next block."""
    pending: dict = {}

    def wrapped(block) -> None:
        if pending:  # this block's inputs are the previous block's quantized outputs
            out = block.inputs.hidden
            records.append({"block": block.index - 1, "local": mse(out, pending["local"]),
                            "model": mse(out, pending["model"]), "model_weighted": mse(out, pending["model"], True),
                            "seconds": pending["seconds"]})
            pending.clear()
        if block.index >= blocks:  # the extra block only delivers the last measured block's outputs
            return
        stream = block.run_state.setdefault("measure_float", block.inputs.hidden)
        with torch.no_grad(), forward_precision(block.config, block.inputs.hidden[0].device):
            local = [o.float() for o in block.inputs.forward(block.module)]
            model = [o.float() for o in block.inputs.forward(block.module, hidden=stream)]
        block.run_state["measure_float"] = [m.to(h.dtype) for m, h in zip(model, block.inputs.hidden)]
        start = time.perf_counter()
        step(block)
        pending.update(local=local, model=model, seconds=time.perf_counter() - start)
    return wrapped


def run(model, tok, row: str, column: str, args) -> list[dict]:
    step, fields = ROWS[row]
    config = QuantConfig(**{**COLUMNS[column]["quant_config"], **fields, "n_samples": args.n_samples,
                            "seqlen": args.seqlen})
    cut = copy.deepcopy(model)
    cut.model.layers = cut.model.layers[:args.blocks + 1]
    cut.config.num_hidden_layers = args.blocks + 1
    records: list[dict] = []
    calibrate(cut.eval(), config, measured(step, args.blocks, records), tokenizer=tok, progress=False, device="cpu")
    return records


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="RTN,GPTQ,SignRound float-block target,SignRound")
    p.add_argument("--columns", default="int4_g128_sym,int3_g128_asym")
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--n-samples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    args = p.parse_args(argv)
    model, tok = load_model(None)
    print(f"torch threads {torch.get_num_threads()}", flush=True)
    for column in args.columns.split(","):
        for row in args.rows.split(","):
            records = run(model, tok, row, column, args)
            print(json.dumps({"row": row, "column": column, "blocks": records}), flush=True)
            for r in records:
                print(f"| {row} | {column} | {r['block']} | {r['local']:.4g} | {r['model']:.4g} | "
                      f"{r['model_weighted']:.4g} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()

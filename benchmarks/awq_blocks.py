"""Per-block evidence for AWQ's scale-search settings on SmolLM2's first blocks (issue 19 part 5).

    python benchmarks/awq_blocks.py                          # 3 blocks, 128 x 512 windows, both parts
    python benchmarks/awq_blocks.py --blocks 2 --n-samples 32 --part runs --rows "full grid, all windows"

Part ``choices``: one calibration at the old search (every ratio on every recorded batch), where each
group with a parent module (q/k/v: the attention, gate/up: the MLP) also scores every ratio on every
batch without pruning, so the whole error matrix (21 candidates x batches) is known. From it, for each
setting of ``SETTINGS`` (a ratio step and a number of search batches), the ratio that setting's search
chooses on the same weights (the same sums in the same order, as ``search_scales`` adds them) and its
*regret*: its error on all batches over the best error on all batches, minus 1. Key 20 is plain RTN.

Part ``runs``: each row of ``ROWS`` calibrated through the shared driver (block by block, int4 g128 sym,
every other field at its default, but AWQ's search fields at the all-window search's, quality_columns.
AWQ_ALL_WINDOWS, as on a GPU), recording per block the chosen ratios, the parent forwards, the step's
seconds and the output errors after the block (``signround_blocks.measured``: ``local`` against the float
block on the same inputs, ``model`` against the float model's hidden states).
Prints JSON lines and tables; writes nothing.
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
from quality_columns import AWQ_ALL_WINDOWS, COLUMNS  # noqa: E402
from signround_blocks import measured  # noqa: E402

from quant_core import QuantConfig  # noqa: E402
from quant_core.algorithms import awq  # noqa: E402
from quant_core.algorithms.driver import calibrate  # noqa: E402
from quant_core.algorithms.grid_search import coarse_to_fine  # noqa: E402
from quant_core.algorithms.pruned_argmin import pruned_argmin  # noqa: E402
from quant_core.loading import load_model  # noqa: E402

ROWS = {"full grid, all windows": dict(awq_grid_step=1, awq_parent_batches=32),
        "step 4, all windows": dict(awq_grid_step=4, awq_parent_batches=32),
        **{f"full grid, {8 * n} {c} windows": dict(awq_grid_step=1, awq_parent_batches=n, awq_parent_batch_choice=c)
           for n in (1, 2, 3) for c in ("spread", "first")}}
# (ratio step, search batches, which batches): what part "choices" simulates on each group's error matrix
SETTINGS = [(1, b, c) for c in ("first", "spread") for b in (1, 2, 3, 4)] + [(s, 16, "all") for s in (2, 4)]


class Recorder:
    """Wraps AWQ's search functions: each search's chosen key, parent forwards and (optionally) full matrix."""

    def __init__(self, full_matrix: bool):
        self.choices, self.matrices, self.forwards, self.marks = [], [], 0, []
        real_c2f, real_out = awq.coarse_to_fine, awq._parent_output

        def c2f(n, step, extra, search):
            best, costs = real_c2f(n, step, extra, search)
            self.choices.append(best)
            self.marks.append(self.forwards)  # parent forwards so far, at each search's end
            return best, costs

        def parent_output(group, batch, config):
            self.forwards += 1
            return real_out(group, batch, config)
        awq.coarse_to_fine, awq._parent_output = c2f, parent_output
        if full_matrix:
            awq.pruned_argmin = self.every_part

    def every_part(self, keys, n_parts, part_cost, factor=lambda _k: 1.0, incumbent=None, rank=None):
        """Every part of every key (no pruning), kept; the choice is the real function's on them."""
        parts = {(k, i): part_cost(k, i) for k in keys for i in range(n_parts)}
        if n_parts > 1:  # a group with a parent: its whole matrix
            self.matrices.append({"keys": list(keys), "parts": [[parts[k, i] for i in range(n_parts)] for k in keys]})
        return pruned_argmin(keys, n_parts, lambda k, i: parts[k, i], factor, incumbent, rank)


def simulated_choice(matrix: dict, n_grid: int, step: int, batches: int, choice: str) -> int:
    """The key ``search_scales`` chooses at ``awq_grid_step=step`` on the batches ``search_batches`` keeps."""
    cols = sorted(awq.search_batches(len(matrix["parts"][0]), batches, choice))
    rows = {k: [p[c] for c in cols] for k, p in zip(matrix["keys"], matrix["parts"])}
    rank = lambda k: -1 if k == n_grid else k  # noqa: E731
    stage = lambda keys, inc: pruned_argmin(keys, len(cols), lambda k, i: rows[k][i], incumbent=inc, rank=rank)  # noqa
    return coarse_to_fine(n_grid, step, [n_grid], stage)[0]


def report_choices(recorder: Recorder, n_grid: int) -> None:
    print("| group | " + " | ".join(f"step {s}, {b * 8} {c}" for s, b, c in SETTINGS) + " |", flush=True)
    for g, matrix in enumerate(recorder.matrices):
        totals = {k: sum(p) for k, p in zip(matrix["keys"], matrix["parts"])}
        best = min(totals.values())
        cells = []
        for step, batches, choice in SETTINGS:
            key = simulated_choice(matrix, n_grid, step, batches, choice)
            cells.append(f"{key} ({totals[key] / best - 1:+.2%})")
        print(f"| {g} | " + " | ".join(cells) + " |", flush=True)
        print(json.dumps({"group": g, "totals": totals, "choices": dict(zip(map(str, SETTINGS), cells))}), flush=True)


def cut_model(model, blocks: int):
    cut = copy.deepcopy(model)
    cut.model.layers = cut.model.layers[:blocks + 1]
    cut.config.num_hidden_layers = blocks + 1
    return cut.eval()


def run(model, tok, fields: dict, args, full_matrix: bool) -> tuple[list[dict], Recorder]:
    config = QuantConfig(**{**COLUMNS[args.column]["quant_config"], "algorithm": "awq", **AWQ_ALL_WINDOWS, **fields,
                            "n_samples": args.n_samples, "seqlen": args.seqlen})
    saved = awq.coarse_to_fine, awq._parent_output, awq.pruned_argmin
    recorder, records = Recorder(full_matrix), []
    try:
        calibrate(cut_model(model, args.blocks), config, measured(awq.awq_step, args.blocks, records),
                  tokenizer=tok, progress=False, device="cpu")
    finally:
        awq.coarse_to_fine, awq._parent_output, awq.pruned_argmin = saved
    return records, recorder


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["choices", "runs", "both"], default="both")
    p.add_argument("--rows", default=";".join(ROWS), help="';'-separated from: " + "; ".join(ROWS))
    p.add_argument("--column", default="int4_g128_sym")
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=512)
    args = p.parse_args(argv)
    model, tok = load_model(None)
    print(f"torch threads {torch.get_num_threads()}", flush=True)
    if args.part in ("choices", "both"):
        start = time.perf_counter()
        _, recorder = run(model, tok, ROWS["full grid, all windows"], args, full_matrix=True)
        print(f"choices: {len(recorder.matrices)} groups, {time.perf_counter() - start:.0f} s", flush=True)
        report_choices(recorder, QuantConfig().awq_n_grid)
    if args.part in ("runs", "both"):
        print("| row | block | ratios (groups consumer-first) | parent forwards | local | model | seconds |")
        for row in args.rows.split(";"):
            records, recorder = run(model, tok, ROWS[row], args, full_matrix=False)
            per_block = len(recorder.choices) // max(len(records), 1)
            for i, r in enumerate(records):
                ratios = recorder.choices[i * per_block:(i + 1) * per_block]
                marks = [0, *recorder.marks][i * per_block:(i + 1) * per_block + 1]
                print(f"| {row} | {r['block']} | {ratios} | {marks[-1] - marks[0]} | {r['local']:.4g} | {r['model']:.4g} | "
                      f"{r['seconds']:.1f} |", flush=True)
            print(json.dumps({"row": row, "blocks": records, "choices": recorder.choices,
                              "parent_forwards": recorder.forwards}), flush=True)


if __name__ == "__main__":
    main()

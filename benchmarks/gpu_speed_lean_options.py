"""The CUDA lean step's launch options on the synthetic Llama-3-8B, in one process (issue 18: the fixed
cost between the kernels of a decode step).

For each option set (``VARIANTS``, ``CudaLeanDecoder`` arguments): graph-replayed tokens/s at each batch,
in rounds that interleave the sets so that drift spreads over all of them; one graph replay's kernel
timeline under torch.profiler (kernel time, the span from the first kernel's start to the last one's end,
the idle time between kernels, the longest kinds of gap); and its logits against the first set's and
against transformers' modules (``StaticDecoder``), fed the same tokens, plus its own greedy tokens.
With --modules, bf16 also times transformers' modules, the other baseline gpu_speed.md divides by.

    python benchmarks/gpu_speed_lean_options.py --formats bf16 --out /tmp/options.json
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_speed_decode_profile import decode_arguments, logits_along, ready_model  # noqa: E402 - same folder
from gpu_speed_model import decoder_for, tokens_per_second  # noqa: E402


# the first is the base the others are compared with
VARIANTS = {"nopdl": {"pdl": False}, "pdl": {"pdl": True}, "pdl_b64": {"pdl": True, "attention_block": 64},
            "pdl_b128": {"pdl": True, "attention_block": 128}}


def kernel_intervals(dec, batch: int, vocab: int) -> list[tuple[float, float, str]]:
    """(start, end, name) in us of the kernels of one graph replay of a warmed-up step."""
    from torch.profiler import ProfilerActivity, profile

    token = dec.prefill(torch.randint(0, vocab, (batch, 16), device="cuda")).argmax(-1)
    for _ in range(3):
        token = dec.step(token).argmax(-1)
    dec._ids.copy_(token.reshape(-1, 1))
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        dec._graph.replay()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name))["traceEvents"]
    return sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events if e.get("cat") == "kernel")


def short(name: str) -> str:
    return name.split("<")[0].split("(")[0][:40]


def timeline(kernels: list[tuple[float, float, str]]) -> dict:
    """Kernel time, span and idle time of one step; each gap charged to its (previous, next) kernel pair."""
    if not kernels:
        return {"kernels": 0, "note": "no kernel events under graph replay"}
    busy, reach, idle, gaps = 0.0, kernels[0][0], 0.0, defaultdict(lambda: [0, 0.0])
    prev = None
    for start, end, name in kernels:
        gap = start - reach
        if prev is not None:
            cell = gaps[(short(prev), short(name))]
            cell[0] += 1
            cell[1] += gap
        idle += max(gap, 0.0)
        busy += max(0.0, end - max(start, reach))
        reach, prev = max(reach, end), name
    by_name = defaultdict(lambda: [0, 0.0])
    for start, end, name in kernels:
        by_name[short(name)][0] += 1
        by_name[short(name)][1] += end - start
    return {"kernels": len(kernels), "kernel_us": round(sum(e - s for s, e, _ in kernels), 1),
            "span_us": round(kernels[-1][1] - kernels[0][0], 1), "busy_us": round(busy, 1), "idle_us": round(idle, 1),
            "by_kernel": sorted(([n, c, round(t, 1)] for n, (c, t) in by_name.items()), key=lambda r: -r[2]),
            "gaps": sorted(([f"{a} -> {b}", c, round(t / c, 2)] for (a, b), (c, t) in gaps.items()),
                           key=lambda r: -r[1] * r[2])[:12]}


@torch.inference_mode()
def correctness(model, batch: int, steps: int = 12) -> dict:
    """Each option set's logits fed the module path's greedy tokens: against the module path (relative L2, top-1
    agreement) and against the first set's (bit-equal or max |diff|); and its own greedy tokens against the first
    set's. The first set runs twice: whether the step is deterministic at all."""
    ids = torch.randint(0, model.config.vocab_size, (batch, 24), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(batch))
    max_len = 24 + steps + 1
    ref = logits_along(decoder_for(model, batch, max_len, "static"), ids, None, steps)
    tokens = ref.argmax(-1)
    out, base, base_greedy = {}, None, None
    first = next(iter(VARIANTS))
    for name, options in [*VARIANTS.items(), (f"{first} again", VARIANTS[first])]:
        got = logits_along(decoder_for(model, batch, max_len, "lean", **options), ids, tokens, steps)
        greedy = logits_along(decoder_for(model, batch, max_len, "lean", **options), ids, None, steps).argmax(-1)
        if base is None:
            base, base_greedy = got, greedy
        out[name] = {"top1_vs_modules": f"{int((got.argmax(-1) == tokens).sum())}/{tokens.numel()}",
                     "rel_l2_vs_modules_max": round(max(float((got[:, s] - ref[:, s]).norm() / ref[:, s].norm())
                                                        for s in range(steps)), 4),
                     "equal_to_base": bool(torch.equal(got, base)),
                     "max_abs_vs_base": round(float((got - base).abs().max()), 5),
                     "greedy_equal_to_base": f"{int((greedy == base_greedy).sum())}/{greedy.numel()}",
                     "logit_scale": round(float(ref.abs().max()), 3)}
        print(f"  correctness b{batch} {name}: {out[name]}", flush=True)
    return out


def main() -> None:
    ap = decode_arguments(__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help="option sets to time (the first is the base)")
    ap.add_argument("--modules", action="store_true", help="bf16: also time transformers' modules")
    ap.add_argument("--timeline", nargs="*", default=list(VARIANTS)[:2], help="option sets to profile")
    ap.add_argument("--no-correctness", action="store_true")
    args = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "layers": args.layers,
              "variants": VARIANTS, "formats": {}}
    for fmt in args.formats:
        model = ready_model(fmt, args.layers)
        row = result["formats"][fmt] = {"tok_s": defaultdict(dict)}
        names = (["modules"] if fmt == "bf16" and args.modules else []) + args.variants
        runs = {(n, b): [] for n in names for b in args.batches}
        for r in range(args.rounds):
            for name in names:
                for b in args.batches:
                    step, options = ("static", {}) if name == "modules" else ("lean", VARIANTS[name])
                    runs[name, b].append(tokens_per_second(model, b, step=step, **options)[0])
            print(f"{fmt} round {r}: " + "; ".join(f"{n} b{b} {v[-1]:.1f}" for (n, b), v in runs.items()), flush=True)
        for (name, b), values in runs.items():
            row["tok_s"][name][str(b)] = {"median": statistics.median(values), "all": [round(v, 1) for v in values]}
        for b in args.batches:
            base = row["tok_s"][args.variants[0]][str(b)]["median"]
            print(f"{fmt} b{b}: " + "; ".join(f"{n} {row['tok_s'][n][str(b)]['median']:.1f} tok/s "
                                              f"({row['tok_s'][n][str(b)]['median'] / base:.3f}x base)"
                                              for n in names), flush=True)
        args.out.write_text(json.dumps(result, indent=1))
        row["timeline"] = {}
        for name in args.timeline:
            options = VARIANTS[name]
            for b in args.batches:
                dec = decoder_for(model, b, 64, "lean", **options)
                tl = row["timeline"][f"{name} b{b}"] = timeline(kernel_intervals(dec, b, model.config.vocab_size))
                del dec
                print(f"{fmt} timeline {name} b{b}: " + json.dumps({k: v for k, v in tl.items() if k != "by_kernel"}),
                      flush=True)
        args.out.write_text(json.dumps(result, indent=1))
        if not args.no_correctness:
            row["correctness"] = {str(b): correctness(model, b) for b in args.batches}
            args.out.write_text(json.dumps(result, indent=1))
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

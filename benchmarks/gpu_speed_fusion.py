"""GPU: q/k/v and gate/up as one launch each (``quant_core.fused_projections``) against separate
launches, side by side in one process: layer rows (Llama-3-8B shapes, weights rotated through
copies so every call reads HBM, graph-replayed) and the synthetic-8B decode (``gpu_speed_model``).
Also times plain nf4 / int4 layer rows, so that two trees with different kernel sources can be
compared by running this script from each (``--no-fusion`` where the tree has no fusion module).

python benchmarks/gpu_speed_fusion.py [--no-fusion] [--no-decode] [--no-layers] [--plain nf4 int4]
    [--decode-formats int4 nf4] [--skip-bf16] --out FILE.json
Prints every figure as measured and rewrites FILE.json after each one (a run cut short keeps its rows).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_speed import copies_for, random_packed, timed  # noqa: E402 - same folder; puts the tree on sys.path
from gpu_speed_model import synthetic_llama, tokens_per_second  # noqa: E402
from quant_core.config import QuantConfig  # noqa: E402
from quant_core.kernels.base import LayerSpec  # noqa: E402
from quant_core.kernels.cuda_kernel import CudaKernel, gemv_candidates  # noqa: E402
from quant_core.quantize import quantize  # noqa: E402

DEV = "cuda"
GROUPS = {"qkv": [(4096, 4096), (4096, 1024), (4096, 1024)], "gate_up": [(4096, 14336), (4096, 14336)]}
FORMATS = {"int4": ("int4", 128), "nf4": ("nf4", 128), "nf4 g64": ("nf4", 64)}
PLAIN = [(4096, 4096), (4096, 14336), (14336, 4096), (4096, 128256)]
DECODE = {"int4": dict(weight_dtype="int4", group_size=128), "nf4": dict(weight_dtype="nf4", group_size=64)}
OUT: dict = {"layers": [], "plain": [], "decode": [], "correct": []}


def save(path: str) -> None:
    with open(path, "w") as f:
        json.dump(OUT, f, indent=1)


def kernels_of(packed_list):
    return [CudaKernel(p, LayerSpec.of(p, "bf16", "cuda")) for p in packed_list]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


def group_rows(fmt_label: str, rows, args) -> None:
    """Separate members against one stacked call, per group and row count (µs a group, graph replay)."""
    from quant_core.fused_projections import stacked

    fmt, gs = FORMATS[fmt_label]
    for name, shapes in GROUPS.items():
        k = shapes[0][0]
        copies = copies_for(sum(kk * n // 2 for kk, n in shapes))
        sets = [[random_packed(fmt, kk, n, gs) for kk, n in shapes] for _ in range(copies)]
        separate = [kernels_of(s) for s in sets]
        fused = [CudaKernel(p, LayerSpec.of(p, "bf16", "cuda")) for p in (stacked(s) for s in sets)]
        bf16 = [[torch.randn(n, kk, device=DEV, dtype=torch.bfloat16) for kk, n in shapes]
                for _ in range(copies_for(sum(kk * n * 2 for kk, n in shapes)))]
        for m in rows:
            x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
            ref = torch.cat([F.linear(x.double(), p.dequantize(torch.float64)) for p in sets[0]], -1)
            out_sep = torch.cat([kk.forward(x) for kk in separate[0]], -1)
            out_fused = fused[0].forward(x)
            correct = {"fmt": fmt_label, "group": name, "m": m, "fused_vs_separate_max_abs": float(
                (out_fused.float() - out_sep.float()).abs().max()), "fused_rel_err": rel_err(out_fused, ref),
                "separate_rel_err": rel_err(out_sep, ref), "bit_equal": bool(torch.equal(out_fused, out_sep))}
            OUT["correct"].append(correct)
            n_calls = len(shapes)
            t_bf16 = min(timed([lambda w=w: F.linear(x, w) for ws in bf16 for w in ws], g) for g in (False, True))
            t_sep = timed([lambda kk=kk: kk.forward(x) for ks in separate for kk in ks], True)
            t_fused = timed([lambda kk=kk: kk.forward(x) for kk in fused], True)
            row = {"fmt": fmt_label, "group": name, "m": m, "bf16_us": t_bf16 * n_calls,
                   "separate_us": t_sep * n_calls, "fused_us": t_fused,
                   "fused_pick": fused[0].config_for(x.contiguous()).label()}
            OUT["layers"].append(row)
            print(f"{fmt_label} {name} M={m}: bf16 {row['bf16_us']:.1f} us, separate {row['separate_us']:.1f} us "
                  f"({row['bf16_us'] / row['separate_us']:.2f}x), fused {t_fused:.1f} us "
                  f"({row['bf16_us'] / t_fused:.2f}x) [{row['fused_pick']}]; {correct}", flush=True)
            save(args.out)
        del separate, fused, bf16, sets
        torch.cuda.empty_cache()


def plain_rows(fmt_label: str, rows, args) -> None:
    """One layer a call, as gpu_speed.py's table (for comparing kernel sources between trees)."""
    fmt, gs = FORMATS[fmt_label]
    for k, n in PLAIN:
        p0 = random_packed(fmt, k, n, gs)
        ks = kernels_of([p0] + [random_packed(fmt, k, n, gs) for _ in range(copies_for(p0.nbytes()) - 1)])
        wb = torch.randn(n, k, device=DEV, dtype=torch.bfloat16)
        ws = [wb] + [wb.clone() for _ in range(copies_for(wb.numel() * 2) - 1)]
        for m in rows:
            x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
            err = rel_err(ks[0].forward(x), F.linear(x.double(), p0.dequantize(torch.float64)))
            t_bf16 = min(timed([lambda w=w: F.linear(x, w) for w in ws], g) for g in (False, True))
            t = timed([lambda kk=kk: kk.forward(x) for kk in ks], True)
            # every few-row config too: the kernel compared at equal launch shape, whatever the pick
            gemv = {c.label(): timed([lambda kk=kk, c=c: kk._launch(x, c) for kk in ks], True)
                    for c in gemv_candidates(m, n, k, ks[0].weight.group)} if args.gemv_sweep else {}
            row = {"fmt": fmt_label, "k": k, "n": n, "m": m, "bf16_us": t_bf16, "us": t, "rel_err": err,
                   "pick": ks[0].config_for(x.contiguous()).label(), "gemv_us": gemv}
            OUT["plain"].append(row)
            print(f"plain {fmt_label} {k}x{n} M={m}: {t:.1f} us ({t_bf16 / t:.2f}x bf16 {t_bf16:.1f}) "
                  f"rel err {err:.2e} [{row['pick']}] few-row configs " +
                  " ".join(f"{c} {v:.1f}" for c, v in gemv.items()), flush=True)
            save(args.out)
        del ks, ws
        torch.cuda.empty_cache()


@torch.inference_mode()
def greedy(model, ids, steps: int = 8):
    """Prefill logits and the greedy tokens of ``steps`` graph-replayed steps."""
    from quant_core.decode import StaticDecoder

    dec = StaticDecoder(model, ids.shape[0], ids.shape[1] + steps + 1)
    logits = dec.prefill(ids)
    first, tokens = logits.float().clone(), []
    for _ in range(steps):
        token = logits.argmax(-1)
        tokens.append(token)
        logits = dec.step(token)
    return first, torch.stack(tokens, -1), logits.float()


def decode_rows(labels, batches, fusion: bool, args) -> None:
    base = {}
    for label in (["bf16"] if not args.skip_bf16 else []) + list(labels):
        model = synthetic_llama(32)
        if label != "bf16":
            quantize(model, QuantConfig(**DECODE[label], modules_to_not_convert=[]), progress=False)
        torch.cuda.empty_cache()
        modes = [("separate", None)]
        if fusion and label != "bf16":
            from quant_core.fused_projections import fuse_projections
            modes.append(("fused", fuse_projections))
        ids = torch.randint(0, model.config.vocab_size, (1, 32), device=DEV)
        first_ref = None
        for mode, apply in modes:
            made = apply(model) if apply else 0
            first, tokens, last = greedy(model, ids)
            if first_ref is None:
                first_ref, tokens_ref, last_ref = first, tokens, last
            else:
                OUT["correct"].append({"decode": label, "groups": made, "prefill_logits_max_abs": float(
                    (first - first_ref).abs().max()), "logit_scale": float(first_ref.abs().max()),
                    "same_tokens": int((tokens == tokens_ref).sum()), "tokens": tokens.numel(),
                    "last_logits_max_abs": float((last - last_ref).abs().max())})
                print(f"decode {label} fused vs separate: {OUT['correct'][-1]}", flush=True)
            for b in batches:
                tps, graph, warm = tokens_per_second(model, b)
                base.setdefault(b, tps)
                row = {"weights": label, "mode": mode, "batch": b, "tok_s": tps, "x_bf16": tps / base[b],
                       "graph": graph, "first_use_s": warm}
                OUT["decode"].append(row)
                print(f"decode {label} {mode} batch {b}: {tps:.1f} tok/s ({row['x_bf16']:.2f}x bf16), "
                      f"{graph}, first use {warm:.1f} s", flush=True)
                save(args.out)
        model = None
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-fusion", action="store_true", help="this tree has no fused_projections module")
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--no-layers", action="store_true")
    ap.add_argument("--plain", nargs="*", default=["nf4", "int4"], help="formats of the plain layer rows")
    ap.add_argument("--decode-formats", nargs="*", default=["int4", "nf4"])
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--gemv-sweep", action="store_true", help="plain rows: also time every few-row config")
    ap.add_argument("--skip-bf16", action="store_true", help="decode: no bf16 row (x bf16 then reads 1.0 for the first)")
    args = ap.parse_args()
    OUT["device"] = torch.cuda.get_device_name()
    if not args.no_decode:  # first: the figure that decides the fusion default
        decode_rows(args.decode_formats, (1, 16), not args.no_fusion, args)
    if not args.no_layers:
        if not args.no_fusion:
            for fmt in ("int4", "nf4"):
                group_rows(fmt, args.rows, args)
        for fmt in args.plain:
            plain_rows(fmt, args.rows, args)
    save(args.out)


if __name__ == "__main__":
    main()

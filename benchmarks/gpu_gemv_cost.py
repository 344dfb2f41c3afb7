"""Where the few-row CUDA kernel's time goes (issue 18): every few-row launch config and kernel variant
on the Llama-3-8B decode shapes, int4 g128 (nf4 g128 and int8 per-channel at one row), against bf16 cuBLAS.

Configs: clusters 1-8 and workspace splits 2-16, in both register budgets (3 blocks an SM, and 4 to 8
rows). Builds: the kernel as shipped, and with extra -D flags (csrc/cuda_gemv.cuh's QMM_GEMV_ABLATE) that
leave one stage out (wrong results, timing only); the difference to the base build is that stage's cost,
measured on the base build's fastest configs. Each config is timed as gpu_speed.py times layers
(CUDA-graph replay, weight copies rotated through HBM, median of repetitions) and with one weight copy
(L2-resident: the fixed cost without the bytes). Run on a CUDA machine:

  python benchmarks/gpu_gemv_cost.py --out cost.json [--variants base,no_meeting] [--shapes 4096x4096,...]
  python benchmarks/gpu_gemv_cost.py --out cmp.json --variants '' --compare OLD_cuda_defaults.json

results/gpu_gemv_cost.json keeps one sweep and one --compare run (their output under "sweep" and "compare");
benchmarks/gpu_gemv_report.py renders it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quant_core.kernels import cuda_build  # noqa: E402
from quant_core.kernels.base import LayerSpec  # noqa: E402
from quant_core.kernels.cuda_kernel import (GEMV_BLOCKS_PER_SM_SMALL, GEMV_SMALL_MAX_ROWS, CudaConfig,  # noqa: E402
                                            CudaKernel, _arch, _shipped, candidates)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_speed import copies_for, random_packed, timed  # noqa: E402 - same folder

SHAPES = [(4096, 4096), (4096, 6144), (4096, 14336), (4096, 28672), (14336, 4096), (4096, 128256)]  # (K, N)
VARIANTS = {  # name: extra nvcc flags (csrc/cuda_gemv.cuh QMM_GEMV_ABLATE: timing only, wrong results)
    "base": (),
    "no_group_wait": ("-DQMM_GEMV_ABLATE=1",),
    "no_meeting": ("-DQMM_GEMV_ABLATE=2",),
    "no_sum_mma": ("-DQMM_GEMV_ABLATE=4",),
}
FORMATS = {"int4": ("int4", 128, "none"), "nf4": ("nf4", 128, "none"), "int8": ("int8", -1, "none")}
CLUSTERS = (1, 2, 3, 4, 5, 6, 7, 8)  # the shipped candidates are 1, 2, 4, 8; the others fill waves otherwise
SPLITS = (2, 3, 4, 5, 6, 7, 8, 12, 16)
ABLATED = 3  # the ablations run on the base build's fastest configs only


def gemv_configs(m: int, n: int, k: int) -> list[CudaConfig]:
    """Every cluster, and workspace splits that leave each warp >= 2 bands, in both register budgets
    (4 blocks an SM to 8 rows only)."""
    out = []
    for occ in (0, GEMV_BLOCKS_PER_SM_SMALL) if m <= GEMV_SMALL_MAX_ROWS else (0,):
        out += [CudaConfig(0, cluster=c, occupancy=occ) for c in CLUSTERS]
        out += [CudaConfig(0, s, cluster=1, occupancy=occ) for s in SPLITS if k // 16 >= 2 * 4 * s]
    return out


def shipped_config(m: int, k: int, n: int, kind: str, zm: str, group: int, table: dict | None = None):
    """The pick of the shipped table (or of ``table``, one of the same form) for this key, or None."""
    key = ("cuda", m, k, n, kind, zm, group, "torch.bfloat16")
    label = (table if table is not None else _shipped()).get(torch.cuda.get_device_name(), {}).get(str(key))
    return next((c for c in candidates(m, n, k, group, kind=kind) if c.label() == label), None)


def libraries(variants: list[str], kinds) -> dict:
    """{(variant, kind, zm): library}, built in parallel (nvcc is single-threaded); the ablations int4 only."""
    jobs = [(v, kind, zm) for v in variants for kind, zm in kinds if kind == "int4" or v == "base"]
    with ThreadPoolExecutor(max_workers=min(32, len(jobs))) as pool:
        list(pool.map(lambda j: cuda_build.build(True, j[1], j[2], _arch(), VARIANTS[j[0]]), jobs))
    return {j: cuda_build.load_library(True, j[1], j[2], _arch(), VARIANTS[j[0]]) for j in jobs}


def time_config(kernels, x, cfg: CudaConfig, lib) -> tuple[float, float]:
    """(rotated, L2-resident) µs per call of ``cfg`` with ``lib`` in every copy."""
    for kk in kernels:
        kk.lib = lib
    rot = timed([lambda kk=kk: kk._launch(x, cfg) for kk in kernels], True, reps=9)
    res = timed([lambda: kernels[0]._launch(x, cfg)] * 20, True, reps=9)
    return rot, res


def reference(kernel, x) -> torch.Tensor:
    """Dequantize-then-matmul in fp32 (the kernel's own dequantize, base build)."""
    return F.linear(x.float(), kernel.dequantize().float())


def check(kernels, x, ref, cfg, lib) -> float:
    """Relative error of one call against ``ref``."""
    kernels[0].lib = lib
    got = kernels[0]._launch(x, cfg).float()
    return float((got - ref).norm() / ref.norm())


def floor_us() -> float:
    """µs per kernel of a graph of trivial kernels: the launch floor graph replay cannot go under."""
    t = torch.zeros(1, device="cuda")
    return timed([lambda: t.add_(1)] * 20, True, reps=9)


def shape_rows(k: int, n: int, fmt_name: str, rows_list, variants, libs, old_table=None) -> list[dict]:
    """Per row count: bf16 cuBLAS, the shipped table's pick (and ``old_table``'s: before / after), and
    unless ``variants`` is empty every few-row config in each build (the ablations on the base build's
    fastest configs only), then the base build's fastest again without PDL."""
    fmt, group, zm = FORMATS[fmt_name]
    p0 = random_packed(fmt, k, n, group)
    spec = LayerSpec.of(p0, "bf16", "cuda")
    kernels = [CudaKernel(p0, spec)] + [CudaKernel(random_packed(fmt, k, n, group), spec)
                                        for _ in range(copies_for(p0.nbytes()) - 1)]
    kind, zm, grp = kernels[0].weight.kind, kernels[0].weight.zero_mode, kernels[0].weight.group
    wb = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    bf16_w = [wb] + [wb.clone() for _ in range(copies_for(wb.numel() * 2) - 1)]
    base_lib = libs[("base", kind, zm)]
    out = []
    for m in rows_list:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        calls = [lambda w=w: F.linear(x, w) for w in bf16_w]
        bf16 = min(timed(calls, False, reps=9), timed(calls, True, reps=9))
        row = {"k": k, "n": n, "m": m, "fmt": fmt_name, "bytes": p0.nbytes(), "bf16_us": bf16, "cells": []}
        kernels[0].lib = base_lib
        ref = reference(kernels[0], x)
        for name, table in (("shipped", None), ("before", old_table)):
            pick = shipped_config(m, k, n, kind, zm, grp, table) if name == "shipped" or table else None
            if pick is not None:
                rot, res = time_config(kernels, x, pick, base_lib)
                row[name] = {"config": pick.label(), "rot_us": rot, "res_us": res,
                             "rel_err": check(kernels, x, ref, pick, base_lib)}
        for v in variants:
            configs = gemv_configs(m, n, k)
            if v.startswith("no_"):
                fastest = sorted((c for c in row["cells"] if c["variant"].startswith("base")), key=lambda c: c["rot_us"])
                configs = [c for c in configs if c.label() in {f["config"] for f in fastest[:ABLATED]}]
            for cfg in configs:
                sweep_cell(row, kernels, x, ref, cfg, v, libs[(v, kind, zm)])
        if variants:
            best = min((c for c in row["cells"] if c["variant"].startswith("base")), key=lambda c: c["rot_us"])
            base_lib.qmm_set_pdl(0)  # the same config without programmatic dependent launch
            sweep_cell(row, kernels, x, ref, next(c for c in gemv_configs(m, n, k) if c.label() == best["config"]),
                       "base_no_pdl", base_lib)
            base_lib.qmm_set_pdl(cuda_build.pdl_from_env())
        print(summary(row), flush=True)
        out.append(row)
    del kernels, bf16_w
    torch.cuda.empty_cache()
    return out


def sweep_cell(row: dict, kernels, x, ref, cfg: CudaConfig, variant: str, lib) -> None:
    """One config of one build into ``row``; cells are named by build and register budget (base/b4)."""
    try:
        rot, res = time_config(kernels, x, cfg, lib)
        cell = {"variant": variant + (f"/b{cfg.occupancy}" if cfg.occupancy else ""), "config": cfg.label(),
                "rot_us": rot, "res_us": res}
        if not variant.startswith("no_"):
            cell["rel_err"] = check(kernels, x, ref, cfg, lib)
        row["cells"].append(cell)
    except Exception as exc:  # noqa: BLE001 - a config that cannot launch is a result
        torch.cuda.synchronize()
        print(f"  {variant} {cfg.label()}: {type(exc).__name__}: {str(exc)[:160]}", flush=True)


def summary(row: dict) -> str:
    k, n, m, bf16 = row["k"], row["n"], row["m"], row["bf16_us"]
    head = f"{row['fmt']} {k}x{n} M={m}: bf16 {bf16:.1f} us"
    for name in ("before", "shipped"):
        if name in row:
            c = row[name]
            head += (f"; {name} {c['config']} {c['rot_us']:.1f} us ({bf16 / c['rot_us']:.2f}x, "
                     f"{row['bytes'] / c['rot_us'] / 1e6:.2f} TB/s; resident {c['res_us']:.1f}; err {c['rel_err']:.1e})")
    lines = [head]
    for v in dict.fromkeys(c["variant"] for c in row["cells"]):
        cells = [c for c in row["cells"] if c["variant"] == v]
        b = min(cells, key=lambda c: c["rot_us"])
        err = max((c.get("rel_err", 0.0) for c in cells), default=0.0)
        lines.append(f"  {v:16s} best {b['config']:10s} {b['rot_us']:6.1f} us ({bf16 / b['rot_us']:.2f}x, "
                     f"{row['bytes'] / b['rot_us'] / 1e6:.2f} TB/s) resident {b['res_us']:5.1f}; max err {err:.1e}; "
                     + " ".join(f"{c['config'][5:]}={c['rot_us']:.1f}/{c['res_us']:.1f}" for c in cells))
    return "\n".join(lines)


PROFILED = {(4096, 4096): ("gemv:s6",), (4096, 6144): ("gemv:s4",), (4096, 14336): ("gemv:c1", "gemv:c2"),
            (4096, 28672): ("gemv:c1", "gemv:c2"), (14336, 4096): ("gemv:s6",), (4096, 128256): ("gemv:c1",)}


def profile_launches(shapes, rows_list) -> None:
    """One launch of each PROFILED config (base build), for Nsight Compute: ncu -k regex:gemv ..."""
    for k, n in shapes:
        p = random_packed("int4", k, n, 128)
        kern = CudaKernel(p, LayerSpec.of(p, "bf16", "cuda"))
        for m in rows_list:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            for cfg in gemv_configs(m, n, k):
                if cfg.label() in PROFILED.get((k, n), ()):
                    kern._launch(x, cfg)
                    torch.cuda.synchronize()
                    print(f"profiled launch: {k}x{n} M={m} {cfg.label()}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="builds swept; '' for none (--compare alone)")
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES))
    ap.add_argument("--rows", default="1,16")
    ap.add_argument("--other-formats", default="nf4,int8", help="timed at one row, base build")
    ap.add_argument("--compare", help="a cuda_defaults.json of before: its picks timed beside the shipped ones")
    ap.add_argument("--profile", action="store_true", help="only one launch of each PROFILED config (for ncu)")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.profile:
        profile_launches(shapes, [int(r) for r in args.rows.split(",")])
        return
    variants = [v for v in args.variants.split(",") if v]
    others = [f for f in args.other_formats.split(",") if f]
    old = json.loads(open(args.compare).read()) if args.compare else None
    kinds = [("int4", "none")] + [("cb4", "none")] * ("nf4" in others) + [("int8", "none")] * ("int8" in others)
    libs = libraries(["base", *[v for v in variants if v != "base"]], kinds)
    data = {"gpu": torch.cuda.get_device_name(), "floor_us": floor_us(), "rows": []}
    print(f"graph floor: {data['floor_us']:.2f} us a trivial kernel", flush=True)
    for k, n in shapes:
        data["rows"] += shape_rows(k, n, "int4", [int(r) for r in args.rows.split(",")], variants, libs, old)
        json.dump(data, open(args.out, "w"), indent=1)
    for fmt in others:
        for k, n in shapes:
            data["rows"] += shape_rows(k, n, fmt, [1], [v for v in variants if v == "base"], libs, old)
            json.dump(data, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()

"""The CUDA kernel's many-row picks (issue 18): every launch config at 16 / 64 / 256 rows on the Llama-3-8B
shapes, int4 g128 and nf4 g128, against bf16 cuBLAS, and the wgmma kernel in three builds: as shipped
(csrc/cuda_wgk.cuh WgTile::IN_FLIGHT: one stage's wgmmas left in flight to 64 rows of a block, drained
from 128), with -DQMM_WG_INFLIGHT=1 (in flight at every row count) and with -DQMM_WG_INFLIGHT=0
(every stage's wgmmas drained before the next stage starts: the loop before session 16). ``--builds``
times other builds instead, e.g. the -D timing knobs of csrc/cuda_qmm.cu (QMM_WG_STAGES_32 / _64 /
_64_SHARED: pipeline stages to 32 rows, at 64 and at 64 with two blocks an SM).

Each config is timed as gpu_speed.py times layers (CUDA-graph replay, weight copies rotated through
HBM, median of repetitions) and checked against dequantize-then-matmul. ``--defaults OUT`` writes the
shipped table (cuda_defaults.json's form) with this run's fastest config for every key it timed;
``--profile`` launches each key's fastest config once (from ``--picks``, this script's JSON) for
Nsight Compute. Run on a CUDA machine:

  python benchmarks/gpu_wgmma_pipeline.py --out wg.json [--defaults new_defaults.json]
  ncu --clock-control none -k regex:'wg_kernel|qmm_kernel|gemv_kernel' python benchmarks/gpu_wgmma_pipeline.py --profile --picks wg.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quant_core.kernels import cuda_build  # noqa: E402
from quant_core.kernels.base import LayerSpec  # noqa: E402
from quant_core.kernels.cuda_kernel import DEFAULTS_FILE, CudaKernel, _arch, candidates  # noqa: E402
from quant_core.kernels.triton_tuning import rows_bucket  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_gemv_cost import check, reference, shipped_config, time_config  # noqa: E402 - same folder
from gpu_speed import copies_for, random_packed, timed  # noqa: E402

SHAPES = [(4096, 4096), (4096, 6144), (4096, 14336), (4096, 28672), (14336, 4096), (4096, 128256)]  # (K, N)
ROWS = (16, 64, 256)
FORMATS = {"int4": ("int4", 128), "nf4": ("nf4", 128)}
BUILDS = {"shipped": (), "in_flight": ("-DQMM_WG_INFLIGHT=1",), "drained": ("-DQMM_WG_INFLIGHT=0",)}
SHIPPED = "shipped"  # the build whose fastest config is "best", --defaults' pick and --profile's launch


def parse_builds(text: str) -> dict[str, tuple[str, ...]]:
    """``name=flags,name=flags`` (flags space-separated)."""
    builds = {}
    for item in text.split(","):
        name, _, flags = item.partition("=")
        builds[name.strip()] = tuple(flags.split())
    return builds


def shape_rows(k: int, n: int, fmt_name: str, rows_list) -> list[dict]:
    fmt, group = FORMATS[fmt_name]
    p0 = random_packed(fmt, k, n, group)
    spec = LayerSpec.of(p0, "bf16", "cuda")
    kernels = [CudaKernel(p0, spec)] + [CudaKernel(random_packed(fmt, k, n, group), spec)
                                        for _ in range(copies_for(p0.nbytes()) - 1)]
    w = kernels[0].weight
    libs = {b: cuda_build.load_library(True, w.kind, w.zero_mode, _arch(), extra) for b, extra in BUILDS.items()}
    wb = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    bf16_w = [wb] + [wb.clone() for _ in range(copies_for(wb.numel() * 2) - 1)]
    out = []
    for m in rows_list:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        calls = [lambda w=w: F.linear(x, w) for w in bf16_w]
        bf16 = min(timed(calls, False, reps=9), timed(calls, True, reps=9))
        kernels[0].lib = libs[SHIPPED]
        ref = reference(kernels[0], x)
        row = {"k": k, "n": n, "m": m, "fmt": fmt_name, "kind": w.kind, "zm": w.zero_mode, "group": w.group,
               "bytes": p0.nbytes(), "bf16_us": bf16, "cells": []}
        pick = shipped_config(m, k, n, w.kind, w.zero_mode, w.group)
        row["table_pick"] = pick.label() if pick else None  # the shipped table's, before this run
        for cfg in candidates(m, n, k, w.group, kind=w.kind):
            if cfg.dequant:
                continue  # a fresh dequantize per call: never the pick without a kept copy
            for build in BUILDS if cfg.mn else (SHIPPED,):
                try:
                    rot, res = time_config(kernels, x, cfg, libs[build])
                    err = check(kernels, x, ref, cfg, libs[build])
                except Exception as exc:  # noqa: BLE001 - a config that cannot launch is a result
                    torch.cuda.synchronize()
                    print(f"  {build} {cfg.label()}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                    continue
                row["cells"].append({"build": build, "config": cfg.label(), "rot_us": rot, "res_us": res,
                                     "rel_err": err})
        for kk in kernels:
            kk.lib = libs[SHIPPED]
        print(summary(row), flush=True)
        out.append(row)
    del kernels, bf16_w
    torch.cuda.empty_cache()
    return out


def best(row: dict, build: str | None = None, wg: bool | None = None) -> dict | None:
    cells = [c for c in row["cells"] if (build is None or c["build"] == build)
             and (wg is None or c["config"].startswith("wg") == wg)]
    return min(cells, key=lambda c: c["rot_us"]) if cells else None


def summary(row: dict) -> str:
    bf16 = row["bf16_us"]
    parts = [f"{row['fmt']} {row['k']}x{row['n']} M={row['m']}: bf16 {bf16:.1f} us"]
    named = [("best", best(row, SHIPPED)), ("wg", best(row, SHIPPED, True))]
    named += [(f"wg {b}", best(row, b, True)) for b in BUILDS if b != SHIPPED]
    for name, cell in named + [("not wg", best(row, SHIPPED, False))]:
        if cell:
            parts.append(f"{name} {cell['config']} {cell['rot_us']:.1f} ({bf16 / cell['rot_us']:.2f}x)")
    pick = next((c for c in row["cells"] if c["build"] == SHIPPED and c["config"] == row["table_pick"]), None)
    if pick:
        parts.append(f"table pick {pick['config']} {pick['rot_us']:.1f} ({bf16 / pick['rot_us']:.2f}x)")
    err = max(c["rel_err"] for c in row["cells"]) if row["cells"] else float("nan")
    return "; ".join(parts) + f"; max rel err {err:.1e}"


def write_defaults(rows: list[dict], path: str) -> None:
    """The shipped table with this run's fastest (shipped build) config at every key it timed."""
    table = json.loads(DEFAULTS_FILE.read_text())
    gpu = table.setdefault(torch.cuda.get_device_name(), {})
    for row in rows:
        cell = best(row, SHIPPED)
        key = ("cuda", rows_bucket(row["m"]), row["k"], row["n"], row["kind"], row["zm"], row["group"], "torch.bfloat16")
        gpu[str(key)] = cell["config"]
    json.dump(table, open(path, "w"), indent=None)


def profile(picks_path: str, shapes, rows_list, formats) -> None:
    """One launch of each chosen row's fastest config (shipped build), for Nsight Compute."""
    rows = json.load(open(picks_path))["rows"]
    for row in rows:
        if (row["k"], row["n"]) not in shapes or row["m"] not in rows_list or row["fmt"] not in formats:
            continue
        cell = best(row, SHIPPED)
        fmt, group = FORMATS[row["fmt"]]
        p = random_packed(fmt, row["k"], row["n"], group)
        kern = CudaKernel(p, LayerSpec.of(p, "bf16", "cuda"))
        x = torch.randn(row["m"], row["k"], device="cuda", dtype=torch.bfloat16)
        cfg = next(c for c in candidates(row["m"], row["n"], row["k"], kern.weight.group, kind=kern.weight.kind)
                   if c.label() == cell["config"])
        kern._launch(x, cfg)
        torch.cuda.synchronize()
        print(f"profiled launch: {row['fmt']} {row['k']}x{row['n']} M={row['m']} {cfg.label()}", flush=True)
        del kern


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="JSON of every timed cell")
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES))
    ap.add_argument("--rows", default=",".join(map(str, ROWS)))
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--defaults", help="write the shipped table with this run's picks here")
    ap.add_argument("--profile", action="store_true", help="launch each --picks row's fastest config once")
    ap.add_argument("--picks", help="this script's JSON, for --profile")
    ap.add_argument("--builds", help="builds of the wgmma kernel to time side by side, as name=flags,... "
                    "(e.g. 'shipped=,s4=-DQMM_WG_STAGES_64=4'); "
                    "default: shipped, in_flight and drained")
    args = ap.parse_args()
    if args.builds:
        BUILDS.clear()
        BUILDS.update(parse_builds(args.builds))
        if SHIPPED not in BUILDS:
            ap.error(f"--builds must name a '{SHIPPED}' build (the one the table picks from)")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rows_list = [int(r) for r in args.rows.split(",")]
    if args.profile:
        profile(args.picks, shapes, rows_list, args.formats.split(","))
        return
    data = {"gpu": torch.cuda.get_device_name(), "rows": []}
    for fmt in args.formats.split(","):
        for k, n in shapes:
            data["rows"] += shape_rows(k, n, fmt, rows_list)
            if args.out:
                json.dump(data, open(args.out, "w"), indent=1)
    if args.defaults:
        write_defaults(data["rows"], args.defaults)


if __name__ == "__main__":
    main()

"""Device check of the CUDA kernel (quant_core/kernels/cuda_*): build every variant, compare every
format, dtype, zero mode, group size and launch config with the reference kernel, then time a few
layer shapes against bf16 cuBLAS and our Triton kernel.

Run on a CUDA machine:  python benchmarks/gpu_speed_cuda_check.py [--skip-timing] [--shapes KxN ...]
Prints one line per check and a FAIL count; exit status 1 if any check failed.
Errors are ||out - ref|| / ||ref|| against float64 (x @ W_ref^T), W_ref = the reference dequantization.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_speed import copies_for, copy_bandwidth, random_packed, timed  # noqa: E402 - same folder
from quant_core.formats import get_format, pack_codes  # noqa: E402
from quant_core.kernels import cuda_build  # noqa: E402
from quant_core.kernels.base import LayerSpec  # noqa: E402
from quant_core.kernels.cuda_kernel import CudaKernel, _arch, candidates  # noqa: E402
from quant_core.kernels.triton_kernel import TritonKernel  # noqa: E402
from quant_core.kernels.triton_tuning import TUNE_ENV  # noqa: E402
from quant_core.packed import PackedWeight  # noqa: E402

DEV = "cuda"
TOL = {"fp16": 3e-3, "bf16": 1.2e-2}
# (label, format, group, zero mode, act-order)
CASES = [("int4 sym g128", "int4", 128, "none", False), ("int4 sym g32", "int4", 32, "none", False),
         ("int4 sym g64", "int4", 64, "none", False), ("int4 sym per-ch", "int4", -1, "none", False),
         ("int4 asym g128", "int4", 128, "int", False), ("int4 min g128", "int4", 128, "min", False),
         ("int4 act-order g128", "int4", 128, "none", True), ("int4_clip g128", "int4_clip", 128, "none", False),
         ("nf4 g64", "nf4", 64, "none", False), ("fp4 g128", "fp4", 128, "none", False),
         ("int8 per-ch", "int8", -1, "none", False), ("int8 asym g128", "int8", 128, "int", False),
         ("int8 min g64", "int8", 64, "min", False)]
SHAPES = [(2048, 768), (1088, 320)]  # (K, N): every tile fits the first; only the 64 x 64 tile the second
ROWS = [1, 5, 12, 33, 130]  # 1, 5: few-row kernel with 8 A rows; 12: with 16
FAILS: list[str] = []


def make_packed(fmt_name, k, n, group, zero_mode, act_order) -> PackedWeight:
    fmt = get_format(fmt_name)
    g = 1 if group <= 0 else -(-k // group)
    codes = torch.randint(0, 1 << fmt.bits, (n, k), dtype=torch.uint8, device=DEV)
    scales = (torch.rand(n, g, device=DEV) * 0.02 + 0.001).half()
    zeros = None
    if zero_mode == "int":
        zeros = torch.randint(0, 1 << fmt.bits, (n, g), dtype=torch.uint8, device=DEV)
    elif zero_mode == "min":
        zeros = (-torch.rand(n, g, device=DEV) * 0.1).half()
    g_idx = None
    if act_order:
        g_idx = (torch.arange(k, device=DEV) // group)[torch.randperm(k, device=DEV)].to(torch.int32)
    return PackedWeight(fmt, k, n, group, pack_codes(codes, fmt.bits), scales, zeros, g_idx)


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out.double() - ref).norm() / ref.norm()).item()


def prebuild(arch: str) -> None:
    """Every variant at once (nvcc runs one core each): later checks find them in the cache."""
    variants = [(bf, fmt, zm) for bf in (False, True) for fmt, zms in
                (("int4", ("none", "int", "min")), ("cb4", ("none",)), ("int8", ("none", "int", "min"))) for zm in zms]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(len(variants), os.cpu_count() or 4)) as pool:
        list(pool.map(lambda v: cuda_build.build(*v, arch), variants))
    print(f"built {len(variants)} variants for sm_{arch} in {time.perf_counter() - t0:.1f} s", flush=True)


def variant_of(fmt: str, zero_mode: str, dtype_name: str) -> str:
    kind = "cb4" if get_format(fmt).is_codebook else f"int{get_format(fmt).bits}"
    return f"{dtype_name},{kind},{zero_mode}"


def check_case(label, fmt, group, zero_mode, act_order, dtype_name, k, n) -> None:
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float16
    packed = make_packed(fmt, k, n, group, zero_mode, act_order)
    spec = LayerSpec.of(packed, dtype_name, "cuda")
    ok, why = CudaKernel.can_implement(spec)
    name = f"{label} {dtype_name} {k}x{n}"
    if not ok:
        FAILS.append(f"{name}: refused: {why}")
        print(f"FAIL {name}: can_implement refused: {why}", flush=True)
        return
    kern = CudaKernel(packed, spec)
    w_ref = packed.dequantize(torch.float32)
    perm = kern.weight.perm
    w_dev = kern.dequantize().float()
    w_cmp = w_ref if perm is None else w_ref[:, perm]
    dq = ((w_dev - w_cmp).abs().max() / w_cmp.abs().max()).item()
    worst, worst_cfg, repeat = 0.0, "", 0.0
    for m in ROWS:
        x = torch.randn(m, k, device=DEV, dtype=dtype)
        ref = x.double() @ w_ref.double().t()
        xp = (x if perm is None else x.index_select(1, perm)).contiguous()
        for cfg in candidates(m, n, k, kern.weight.group, kind=kern.weight.kind):
            a = kern._launch(xp, cfg)
            b = kern._launch(xp, cfg)  # split-K workspace must be back to zero
            err = rel(a, ref)
            repeat = max(repeat, rel(b, a.double()) if torch.isfinite(a).all() else float("inf"))
            if err > worst:
                worst, worst_cfg = err, f"M={m} {cfg.label()}"
        err = rel(kern.forward(x), ref)  # tuned path, act-order gather included
        if err > worst:
            worst, worst_cfg = err, f"M={m} forward"
    tol = TOL[dtype_name]
    # split-K sums arrive through atomics in any order: a repeat may differ by rounding (~1e-4);
    # a workspace not reset to zero would differ by ~100 %
    bad = worst > tol or dq > tol or repeat > 1e-2
    if bad:
        FAILS.append(name)
    print(f"{'FAIL' if bad else 'ok  '} {name}: worst rel err {worst:.2e} ({worst_cfg}); dequant max err {dq:.2e}; "
          f"repeat diff {repeat:.1e}", flush=True)


SPEED_FORMATS = (("int4 g128", "int4", 128), ("nf4 g128", "nf4", 128), ("int8 per-ch", "int8", -1))


def speed(shapes, rows_list, copy_tbs, with_triton: bool, formats=("int4", "nf4", "int8"), sweep_on=True) -> None:
    print("\n| K×N | fmt | M | bf16 min(eager,graph) µs | cuda µs (×) | triton µs (×) | cuda BW | cuda config "
          "| same, PDL flipped µs |")
    print("|---|---|---|---|---|---|---|---|---|")
    import torch.nn.functional as F
    for k, n in shapes:
        wb = torch.randn(n, k, device=DEV, dtype=torch.bfloat16)
        bf16_w = [wb] + [wb.clone() for _ in range(copies_for(wb.numel() * 2) - 1)]
        for label, fmt, gs in [f for f in SPEED_FORMATS if f[1] in formats]:
            ps = [random_packed(fmt, k, n, gs)]
            ps += [random_packed(fmt, k, n, gs) for _ in range(copies_for(ps[0].nbytes()) - 1)]
            spec = LayerSpec.of(ps[0], "bf16", "cuda")
            cks = [CudaKernel(p, spec) for p in ps]
            tks = [TritonKernel(p, spec) for p in ps] if with_triton else []
            for m in rows_list:
                x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
                bcalls = [lambda w=w: F.linear(x, w) for w in bf16_w]
                base = min(timed(bcalls, False), timed(bcalls, True))
                cfg = cks[0].config_for(x)
                c = timed([lambda kk=kk: kk.forward(x) for kk in cks], True)
                t = timed([lambda kk=kk: kk.forward(x) for kk in tks], True) if tks else float("nan")
                bw = ps[0].nbytes() / c / 1e6
                # the same launches with programmatic dependent launch flipped (on by default, so this column is
                # without it; with QUANTLLM_CUDA_PDL=0 the main column is without and this one with)
                was = cks[0].lib.qmm_set_pdl(1)
                cks[0].lib.qmm_set_pdl(1 - was)
                off = timed([lambda kk=kk: kk.forward(x) for kk in cks], True)
                cks[0].lib.qmm_set_pdl(was)
                print(f"| {k}×{n} | {label} | {m} | {base:.1f} | {c:.1f} ({base / c:.2f}×) | {t:.1f} ({base / t:.2f}×) "
                      f"| {bw:.2f} TB/s ({100 * bw / copy_tbs:.0f}%) | {cfg.label()} | {off:.1f} |", flush=True)
            if label == "int4 g128" and sweep_on:
                sweep(cks, k, n, ps[0].nbytes(), rows_list)
            del cks, tks, ps
            torch.cuda.empty_cache()


def sweep(cks, k, n, nbytes, rows) -> None:
    """Every candidate's graph time per row count (weights rotated), to see what the tiles do; for
    the dequantize + cuBLAS path also with the dequantized weight kept (``keep_dense``)."""
    for m in rows:
        x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
        cells = []
        for cfg in candidates(m, n, k, 128, kept=m >= 32):
            try:
                us = timed([lambda kk=kk: kk._launch(x, cfg) for kk in cks], True)
                cells.append(f"{cfg.label()} {us:.1f} ({nbytes / us / 1e6:.2f} TB/s)")
                if cfg.dequant:
                    for kk in cks:
                        kk.keep_dense = True
                    us = timed([lambda kk=kk: kk._launch(x, cfg) for kk in cks], True)
                    cells.append(f"dequant+mm kept {us:.1f}")
                    for kk in cks:
                        kk.keep_dense, kk._dense = False, None
            except Exception as exc:  # noqa: BLE001 - a config that fails to launch is a finding
                cells.append(f"{cfg.label()} {type(exc).__name__}")
        print(f"  sweep {k}x{n} M={m} (µs): " + "; ".join(cells), flush=True)


def profile_target(spec: str) -> None:
    """``KxN,M,TILE,SPLITS``: 20 launches of one int4 g128 bf16 config, for ncu (no tuning, no checks)."""
    shape, m, tile, splits = spec.split(",")
    k, n = map(int, shape.split("x"))
    from quant_core.kernels.cuda_kernel import CudaConfig
    ps = [random_packed("int4", k, n, 128) for _ in range(copies_for(k * n // 2))]
    kerns = [CudaKernel(p, LayerSpec.of(p, "bf16", "cuda")) for p in ps]
    x = torch.randn(int(m), k, device=DEV, dtype=torch.bfloat16)
    for i in range(20):
        kerns[i % len(kerns)]._launch(x, CudaConfig(int(tile), int(splits)))
    torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-correctness", action="store_true", help="only the timing (after a separate check run)")
    ap.add_argument("--no-sweep", action="store_true", help="time the tuned pick only, not every int4 candidate")
    ap.add_argument("--shapes", nargs="+", default=["4096x4096", "4096x14336"], metavar="KxN")
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 16, 64])
    ap.add_argument("--triton", action="store_true", help="also time our Triton kernel (compiles: minutes)")
    ap.add_argument("--formats", nargs="+", default=["int4", "nf4", "int8"], help="formats to time")
    ap.add_argument("--skip-variants", nargs="*", default=[], metavar="DTYPE,KIND,ZM",
                    help="variants that failed gpu_speed_cuda_smoke.py (a kernel fault ends the process)")
    ap.add_argument("--profile", metavar="KxN,M,TILE,SPLITS", help="only launch one config 20 times (for ncu)")
    args = ap.parse_args()
    if args.profile:
        return profile_target(args.profile)
    props = torch.cuda.get_device_properties(0)
    print(f"GPU {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}; "
          f"{subprocess.run([cuda_build.nvcc(), '--version'], capture_output=True, text=True).stdout.splitlines()[-1]}")
    prebuild(_arch())
    torch.manual_seed(0)
    os.environ[TUNE_ENV] = "0"  # correctness: forward() takes the heuristic default, times nothing
    for k, n in [] if args.skip_correctness else SHAPES:
        for dtype_name in ("bf16", "fp16"):
            for case in CASES:
                if variant_of(case[1], case[3], dtype_name) in args.skip_variants:
                    FAILS.append(f"{case[0]} {dtype_name} {k}x{n}: skipped (smoke test failed)")
                    continue
                try:
                    check_case(*case, dtype_name, k, n)
                except Exception as exc:  # noqa: BLE001 - report and go on: one run must show every failure
                    FAILS.append(f"{case[0]} {dtype_name} {k}x{n}: {type(exc).__name__}")
                    print(f"FAIL {case[0]} {dtype_name} {k}x{n}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                    torch.cuda.synchronize()
    print(f"\ncorrectness: {len(FAILS)} failed" + (": " + "; ".join(FAILS) if FAILS else ""), flush=True)
    del os.environ[TUNE_ENV]
    if not args.skip_timing:
        copy_tbs = copy_bandwidth()
        print(f"copy bandwidth {copy_tbs:.2f} TB/s")
        speed([tuple(map(int, s.split("x"))) for s in args.shapes], args.rows, copy_tbs, args.triton, args.formats,
              not args.no_sweep)
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()

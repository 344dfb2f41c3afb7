"""Smoke test of every CUDA kernel variant, each in its own process, before the full device check.

A kernel fault (illegal instruction or address) poisons the whole CUDA context, so one bad
variant would hide every later result; here each variant launches every tile, row-block size and
split once (CUDA_LAUNCH_BLOCKING=1, synchronised after each launch) in a separate process, all in
parallel. The first variant that fails is re-run under compute-sanitizer, which names the
faulting instruction and source line (the library is built with -lineinfo).

python benchmarks/gpu_speed_cuda_smoke.py            # all variants; prints one line each
python benchmarks/gpu_speed_cuda_smoke.py bf16,int4,none   # one variant, in this process
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quant_core.formats import get_format, pack_codes  # noqa: E402
from quant_core.kernels.base import LayerSpec  # noqa: E402
from quant_core.kernels.cuda_kernel import TILES, CudaConfig, CudaKernel, gemv_candidates, wgmma_candidates  # noqa: E402
from quant_core.packed import PackedWeight  # noqa: E402

VARIANTS = [f"{dt},{kind},{zm}" for dt in ("bf16", "fp16") for kind, zms in
            (("int4", ("none", "int", "min")), ("cb4", ("none",)), ("int8", ("none", "int", "min"))) for zm in zms]
FORMAT_OF = {"int4": "int4", "cb4": "nf4", "int8": "int8"}


def one_variant(variant: str) -> None:
    dtype_name, kind, zero_mode = variant.split(",")
    fmt = get_format(FORMAT_OF[kind])
    k, n, group = 512, 256, 64  # every tile fits
    codes = torch.randint(0, 1 << fmt.bits, (n, k), dtype=torch.uint8, device="cuda")
    scales = (torch.rand(n, k // group, device="cuda") * 0.02 + 0.001).half()
    zeros = {"none": None, "int": torch.randint(0, 1 << fmt.bits, (n, k // group), dtype=torch.uint8, device="cuda"),
             "min": (-torch.rand(n, k // group, device="cuda") * 0.1).half()}[zero_mode]
    packed = PackedWeight(fmt, k, n, group, pack_codes(codes, fmt.bits), scales, zeros)
    kern = CudaKernel(packed, LayerSpec.of(packed, dtype_name, "cuda"))
    w_ref = packed.dequantize(torch.float32).double()
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float16
    worst, launches = 0.0, 0
    for m in (1, 12, 20, 40, 100, 200):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        ref = x.double() @ w_ref.t()
        configs = [CudaConfig(tile, splits) for tile in range(len(TILES)) for splits in ((1, 2) if m <= 64 else (1,))]
        wg = wgmma_candidates(m, n, k, group, kind)  # sm_90: every wgmma tile, row block and split
        # the few-row kernel in every cluster size, and K split over 2, 3 and 8 blocks meeting in the workspace
        gemv = gemv_candidates(m, n, k, group)
        gemv += [CudaConfig(0, s, cluster=1) for s in (2, 3, 8)] if gemv else []
        for cfg in configs + gemv + wg:
            out = kern._launch(x, cfg)
            torch.cuda.synchronize()
            err = ((out.double() - ref).norm() / ref.norm()).item()
            worst = max(worst, err if err == err else float("inf"))
            launches += 1
            if not err < 0.05:
                print(f"smoke {variant}: BAD m={m} {cfg.label()} rel err {err:.3g}", flush=True)
    print(f"smoke {variant}: {launches} launches, worst rel err {worst:.2e}", flush=True)


def all_variants() -> list[str]:
    """Runs every variant in parallel subprocesses; returns the ones whose process failed."""
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
    procs = {v: subprocess.Popen([sys.executable, __file__, v], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for v in VARIANTS}
    failed = []
    for v, p in procs.items():
        out, _ = p.communicate(timeout=300)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        print(f"{'ok  ' if p.returncode == 0 else 'FAIL'} {v}: " + (lines[-1] if lines else "(no output)")[:300],
              flush=True)
        if p.returncode != 0:
            failed.append(v)
            print("   " + "\n   ".join(lines[-6:]), flush=True)
    return failed


def sanitize(variant: str) -> None:
    cmd = ["compute-sanitizer", "--tool", "memcheck", "--print-limit", "5", sys.executable, __file__, variant]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=240).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"compute-sanitizer on {variant} did not finish: {exc}", flush=True)
        return
    keep = [ln for ln in out.splitlines() if "=====" in ln][:40]
    print(f"compute-sanitizer on {variant}:\n" + "\n".join(keep), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        one_variant(sys.argv[1])
    else:
        bad = all_variants()
        if bad:
            sanitize(bad[0])
        sys.exit(1 if bad else 0)

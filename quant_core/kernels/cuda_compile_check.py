"""CI check that the CUDA kernel source compiles, on a machine with nvcc and no GPU (``./scripts/test``).

Variants (dtype x format x zero mode) go through nvcc's front end to PTX for sm_90, which
instantiates their templates; two go all the way through ptxas, for sm_80 and sm_90, which checks
the inline PTX (mma for fp16 and for bf16, cp.async, ldmatrix, red). By default the variants cover
every pair of settings (each dtype with each format and each zero mode, each format with each of its
zero modes: 8 compiles, about 2.5 CPU-minutes); ``--all`` compiles all 12 (about 4). Without nvcc it
says so and succeeds: the registry then falls back to the Triton kernels at run time.

python -m quant_core.kernels.cuda_compile_check [--jobs N] [--all]     ($QUANTLLM_SKIP_CUDA_CHECK=1 skips it)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from . import cuda_build
from ..errors import BuildError

VARIANTS = [(bf16, fmt, zm) for bf16 in (False, True) for fmt, zms in
            (("int4", ("none", "int", "min")), ("cb4", ("none",)), ("int8", ("none", "int", "min"))) for zm in zms]
FULL = [((False, "int8", "min"), "80"), ((True, "int4", "int"), "90")]  # both mma types, both targets
# with FULL, every pair of settings once: a template instantiated by a triple alone is what --all adds
PAIRWISE = [(False, "int4", "none"), (True, "int4", "min"), (False, "cb4", "none"), (True, "cb4", "none"),
            (False, "int8", "int"), (True, "int8", "none")]


def _jobs(tmp: str, variants=PAIRWISE) -> list[tuple[str, list[str]]]:
    jobs = []
    for i, v in enumerate(variants):
        cmd = cuda_build.compile_command(os.path.join(tmp, f"v{i}.ptx"), *v, "90")
        jobs.append((f"{v} ptx sm_90", [c for c in cmd if c not in ("-shared", "-Xcompiler", "-fPIC")] + ["--ptx"]))
    for v, arch in FULL:
        cmd = cuda_build.compile_command(os.path.join(tmp, f"full{arch}.o"), *v, arch)
        jobs.append((f"{v} sm_{arch}", [c for c in cmd if c != "-shared"] + ["-c"]))
    return jobs


def _run(job: tuple[str, list[str]]) -> tuple[str, int, str]:
    name, cmd = job
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    return name, proc.returncode, proc.stderr[-2000:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--all", action="store_true", help="every variant to PTX, not only a pairwise cover")
    args = ap.parse_args()
    if os.environ.get("QUANTLLM_SKIP_CUDA_CHECK") == "1":
        print("CUDA compile check skipped ($QUANTLLM_SKIP_CUDA_CHECK=1)")
        return 0
    try:
        cuda_build.nvcc()
    except BuildError as exc:
        print(f"CUDA compile check skipped: {exc}")
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(_run, _jobs(tmp, VARIANTS if args.all else PAIRWISE)))
    failed = [(name, err) for name, rc, err in results if rc != 0]
    for name, err in failed:
        print(f"FAILED {name}:\n{err}")
    print(f"CUDA compile check: {len(results) - len(failed)}/{len(results)} compiled "
          f"({time.perf_counter() - t0:.0f} s, {cuda_build._nvcc_version(cuda_build.nvcc())})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed of the bf16 Gram kernel (csrc/qgram.cpp) against PyTorch's fp32 ``addmm_`` on one calibration batch.

    python benchmarks/gram_speed.py --threads 1     # best of 8 per path, 4096 tokens, SmolLM2's widths
"""
from __future__ import annotations

import argparse
import time

import torch

from quant_core.kernels.cpu_gram import accumulate_gram


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: builds/loads the kernel library, faults the buffers in
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for k in (576, 1536):
        x = torch.randn(args.tokens, k).to(torch.bfloat16)
        xf, h = x.float(), torch.zeros(k, k)
        paths = {"fp32 addmm_": lambda: h.addmm_(xf.T, xf), "vdpbf16ps": lambda: accumulate_gram(h, x, 1.0, True),
                 "widening fp32": lambda: accumulate_gram(h, x, 1.0, False)}
        for name, fn in paths.items():
            s = best_seconds(fn, args.repeats)
            print(f"{k:5d} columns  {name:14s} {s * 1e3:7.1f} ms  ({2 * args.tokens * k * k / s / 1e9:.0f} GFLOP/s "
                  f"of the full square)", flush=True)


if __name__ == "__main__":
    main()

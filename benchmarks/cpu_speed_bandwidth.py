"""GEMV bandwidth of the C++ CPU kernels against the machine's plain read bandwidth, same run.

Used by cpu_speed.py's "bandwidth" child. Read bandwidth: ``torch.sum`` over a 512 MiB float32
array (median of repeats, the benchmark's thread count). Kernels: one new token (M = 1) through
the bare fused kernel (``gemv`` on prepared activations: no module or Python layer around it)
for each ISA variant this CPU runs (AVX2 always, forced; AVX-512 where present), format and
activation path, on 1.1B layer shapes, the weights rotated through enough copies that every
call reads them from memory. GB/s counts the packed weight, its scales and offsets.
Each kernel runs the path users get by default ("fp32" activations: int16 per block on both ISAs
for int formats; for nf4 int16 levels on AVX2, the float FMA path on AVX-512; M = 1 takes AVX2's
row kernels, csrc/qgemv16_rows.cpp and qgemv16_lut.cpp).
"""
from __future__ import annotations

import statistics
import time

import torch

SHAPES = {"gate/up_proj 2048x5632": (2048, 5632), "down_proj 5632x2048": (5632, 2048), "4096x4096": (4096, 4096)}
FORMATS = {  # name -> (weight dtype, group size, activation paths)
    "int4 g128": ("int4", 128, ("fp32", "int8")),
    "int8": ("int8", -1, ("fp32", "int8")),
    "nf4 g64": ("nf4", 64, ("fp32",)),
}


def read_bandwidth(repeats: int) -> float:
    a = torch.ones(128 << 20)
    a.sum()
    times = []
    for _ in range(max(repeats, 5)):
        t = time.perf_counter()
        a.sum()
        times.append(time.perf_counter() - t)
    return a.numel() * 4 / statistics.median(times) / 1e9


def kernel_bandwidth(kernel_name: str, fmt: str, group_size: int, compute: str, k: int, n: int, cache_bytes: int,
                     repeats: int) -> float:
    from random_weights import random_packed  # noqa: E402  (sibling module)
    from quant_core.kernels.base import LayerSpec
    from quant_core.kernels.registry import load_kernel_class

    cls = load_kernel_class(kernel_name)
    gen = torch.Generator().manual_seed(0)
    first = random_packed(fmt, k, n, group_size, True, gen)
    spec = LayerSpec.of(first, compute, "cpu")
    kernels = [cls(first, spec)]
    while len(kernels) * kernels[0].w.nbytes() < cache_bytes:
        kernels.append(cls(random_packed(fmt, k, n, group_size, True, gen), spec))
    x = kernels[0].activations(torch.randn(1, k))
    out = torch.empty(1, n)
    for kernel in kernels:
        kernel.gemv(x, out)
    times = []
    for i in range(max(repeats * 10, 2 * len(kernels))):
        t = time.perf_counter()
        kernels[i % len(kernels)].gemv(x, out)
        times.append(time.perf_counter() - t)
    return kernels[0].w.nbytes() / statistics.median(times) / 1e9


def child_bandwidth(args) -> dict:
    from quant_core import cpu_features

    variants = ["cpu_avx2"] + (["cpu_avx512"] if cpu_features.at_least("avx512") else [])
    out = {"read_gb_s": read_bandwidth(args.repeats), "kernels": {}}
    for kernel_name in variants:
        for fmt_name, (fmt, group_size, computes) in FORMATS.items():
            for compute in computes:
                for shape, (k, n) in SHAPES.items():
                    gbs = kernel_bandwidth(kernel_name, fmt, group_size, compute, k, n, args.cache_bytes, args.repeats)
                    out["kernels"][f"{kernel_name}|{fmt_name}|{compute}|{shape}"] = gbs
    out["read_gb_s_end"] = read_bandwidth(args.repeats)  # the machine may have got busier meanwhile
    return out

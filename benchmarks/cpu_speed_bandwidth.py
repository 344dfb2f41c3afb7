"""GEMV bandwidth of the C++ CPU kernels against the machine's plain read bandwidth, interleaved.

Used by cpu_speed.py's "bandwidth" child. On this shared VM a plain read moved 26.5-40.5 GB/s
between runs and minutes, so one read figure at the start of a run made "kernel / read" swing
55-112 %. Each kernel is therefore timed in blocks alternating with blocks of a plain read of the
same bytes: read, kernel, read, kernel, ..., read (``ALTERNATIONS`` kernel blocks), and every
kernel block is set against the median of the two read blocks beside it; a kernel's ratio is the
median of its blocks' ratios, its spread their min and max. A block's figure is its fastest call
(``block_gb_s``), the same for reads and kernels.

Plain read: ``torch.sum`` (the benchmark's thread count) over float32 chunks as large as one
kernel call's packed weight, rotated over as many bytes as the kernel's copies, so that both read
the same number of bytes per call from memory (neither from cache) and pay one call each. The
whole-array read (512 MiB) at the start and end stays as the figure earlier runs reported.

Kernels: one new token (M = 1) through the bare fused kernel (``gemv`` on prepared activations: no
module or Python layer around it) for each ISA variant this CPU runs (AVX2 always, forced: the
``cpu_avx2`` kernel class loads the library built with -mavx2 -mfma -mf16c only; AVX-512 where
present), format and activation path, on 1.1B layer shapes, the weights rotated through enough
copies that every call reads them from memory. GB/s counts the packed weight, its scales and
offsets. Each kernel runs the path users get by default ("fp32" activations: int16 per block on
both ISAs for int formats; for nf4 int16 levels on AVX2, the float FMA path on AVX-512; M = 1
takes AVX2's row kernels, csrc/qgemv16_rows.cpp and qgemv16_lut.cpp).
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
ALTERNATIONS = 7  # kernel blocks per kernel, each between two read blocks
DISTURBED = 0.5  # adjacent reads under this fraction of the run's median read: the kernel is measured again
# Bytes each side rotates over, at least: with 96 MiB (3x this CPU's 32 MiB L3) the fastest read calls ran
# 45-56 GB/s (part of a chunk still in L3) against 33-36 with 256 MiB
MIN_FOOTPRINT = 256 << 20
CALL_QUANTILE = 0.0  # a block's figure: this quantile of its call times (read and kernel alike): the fastest


def read_bandwidth(repeats: int) -> float:
    """The whole-array read: torch.sum over 512 MiB float32 (median of repeats)."""
    a = torch.ones(128 << 20)
    a.sum()
    times = []
    for _ in range(max(repeats, 5)):
        t = time.perf_counter()
        a.sum()
        times.append(time.perf_counter() - t)
    return a.numel() * 4 / statistics.median(times) / 1e9


def block_gb_s(calls: list, nbytes: int, count: int) -> float:
    """GB/s of ``count`` calls rotating over ``calls`` (each reads ``nbytes``), from the call time at
    ``CALL_QUANTILE``: on the shared 2-core VM a call whose thread lost its core took 10-50x longer,
    and at load 7-8 more than half the calls of a block did (block medians of 0.4-1 GB/s; with the
    faster quarter still some blocks)."""
    times = []
    for i in range(count):
        t = time.perf_counter()
        calls[i % len(calls)]()
        times.append(time.perf_counter() - t)
    return nbytes / sorted(times)[int(CALL_QUANTILE * (len(times) - 1))] / 1e9


def read_calls(nbytes: int, copies: int) -> list:
    """torch.sum over each of ``copies`` float32 chunks of ``nbytes`` (one buffer, chunk by chunk)."""
    n = nbytes // 4
    buf = torch.ones(copies * n)
    return [lambda c=buf[i * n:(i + 1) * n]: c.sum() for i in range(copies)]


def kernel_calls(kernel_name: str, fmt: str, group_size: int, compute: str, k: int, n: int, cache_bytes: int):
    """(gemv calls, one per copy of a random [n, k] layer, whose bytes add up to cache_bytes; bytes per call)."""
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
    return [lambda kernel=kernel: kernel.gemv(x, out) for kernel in kernels], kernels[0].w.nbytes()


def interleaved(kernel: list, read: list, nbytes: int, repeats: int) -> dict:
    """Read and kernel blocks alternating (read first and last); each kernel block against its two reads."""
    count = max(repeats * 8, 3 * len(kernel))  # every copy at least three times per block
    for call in kernel + read:  # first touch: page faults and lazy builds outside the timed blocks
        call()
    reads, kernels = [block_gb_s(read, nbytes, count)], []
    for _ in range(ALTERNATIONS):
        kernels.append(block_gb_s(kernel, nbytes, count))
        reads.append(block_gb_s(read, nbytes, count))
    ratios = [kb / statistics.median(reads[i:i + 2]) for i, kb in enumerate(kernels)]
    return {"gb_s": statistics.median(kernels), "read_gb_s": statistics.median(reads),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "read_min": min(reads), "read_max": max(reads)}


def measure(key: str, args) -> dict:
    """One kernel (key "kernel|format|activations|layer") interleaved with reads of its bytes."""
    kernel_name, fmt_name, compute, shape = key.split("|")
    fmt, group_size, _ = FORMATS[fmt_name]
    k, n = SHAPES[shape]
    calls, nbytes = kernel_calls(kernel_name, fmt, group_size, compute, k, n, max(args.cache_bytes, MIN_FOOTPRINT))
    return interleaved(calls, read_calls(nbytes, len(calls)), nbytes, args.repeats)


def child_bandwidth(args) -> dict:
    from quant_core import cpu_features

    variants = ["cpu_avx2"] + (["cpu_avx512"] if cpu_features.at_least("avx512") else [])
    out = {"read_gb_s": read_bandwidth(args.repeats), "kernels": {}, "threads": torch.get_num_threads()}
    keys = [f"{kernel}|{fmt}|{compute}|{shape}" for kernel in variants for fmt, (_, _, computes) in FORMATS.items()
            for compute in computes for shape in SHAPES]
    for key in keys:
        out["kernels"][key] = measure(key, args)
    # A kernel whose adjacent reads ran at under half the run's typical read lost its cores for most
    # of its blocks (another job): measured once more at the end; if again, marked and left out of targets.
    typical = statistics.median(r["read_gb_s"] for r in out["kernels"].values())
    for key in keys:
        if out["kernels"][key]["read_gb_s"] < DISTURBED * typical:
            again = measure(key, args)
            again["disturbed"] = again["read_gb_s"] < DISTURBED * typical
            out["kernels"][key] = again | {"remeasured": True}
    out["read_gb_s_end"] = read_bandwidth(args.repeats)  # the machine may have got busier meanwhile
    return out

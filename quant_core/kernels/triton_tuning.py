"""Launch configurations for the Triton kernels: candidates, a default, and a per-shape cache.

The first call of a new (path, rows bucket, K, N, format) on a GPU times every
candidate replayed from a CUDA graph (``triton.testing.do_bench_cudagraph``, median)
and keeps the fastest for the life of the process. Timed eagerly, each call would
carry ~80 us of Python launch work, more than most of these kernels run, and the
pick would be noise (an H100 once chose a 41 us config for M=4 on 4096x4096 where
the M=16 pick ran in 16 us). While a CUDA graph is being captured, or under the
interpreter, or with $QUANTLLM_TRITON_TUNE=0, nothing is timed: the first
candidate (the heuristic default) is used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

TUNE_ENV = "QUANTLLM_TRITON_TUNE"  # "0": take the first (heuristic) candidate, time nothing

SM_COUNT_FALLBACK = 132  # an H100 SXM
DEQUANT_MIN_ROWS = 32  # below this the dequantize + cuBLAS path is not even timed


@dataclass(frozen=True)
class Config:
    block_n: int
    block_k: int  # GEMV: words per step; GEMM: codes per step
    num_warps: int
    split_k: int = 1
    block_m: int = 0  # GEMM only
    num_stages: int = 2
    expand: bool = False  # GEMM: read each word once and split it in registers
    dequant: bool = False  # "GEMM" by dequantizing the weight to [K, N], then torch.mm (cuBLAS)

    def label(self) -> str:
        if self.dequant:
            return f"dequant+mm(k{self.block_k}n{self.block_n})"
        m = f"m{self.block_m}" if self.block_m else ""
        e = "e" if self.expand else ""
        return f"{m}n{self.block_n}k{self.block_k}w{self.num_warps}s{self.num_stages}x{self.split_k}{e}"


def sm_count() -> int:
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return SM_COUNT_FALLBACK


def _split_for(tiles: int, k_steps: int, target: int) -> int:
    """The power-of-two K split that brings the program count near ``target``."""
    split = 1
    while tiles * split * 2 <= target and split * 2 <= k_steps:
        split *= 2
    return split


def gemv_candidates(rows: int, n: int, kw: int, interpreting: bool) -> list[Config]:
    if interpreting:
        return [Config(block_n=32, block_k=4, num_warps=1, split_k=2 if kw >= 8 else 1)]
    target = 4 * sm_count()  # rows add programs but share weight tiles, so they don't count
    out = []
    for block_n, block_kw, warps in ((128, 16, 4), (32, 16, 2), (64, 16, 4), (128, 8, 4), (256, 8, 8),
                                     (128, 32, 8), (64, 32, 4), (256, 16, 8)):
        steps = -(-kw // block_kw)
        split = _split_for(-(-n // block_n), steps, target)
        for s in dict.fromkeys((split, max(1, split // 2), min(split * 2, steps), 1)):
            out.append(Config(block_n, block_kw, warps, s))
    return out


def gemm_candidates(m: int, n: int, k: int, interpreting: bool) -> list[Config]:
    if interpreting:
        split = 2 if k >= 64 else 1
        out = [Config(block_n=16, block_k=32, num_warps=1, split_k=split, block_m=16),
               Config(block_n=16, block_k=32, num_warps=1, split_k=split, block_m=16, expand=True)]
        if m > DEQUANT_MIN_ROWS:
            out.append(Config(block_n=16, block_k=32, num_warps=1, dequant=True))
        return out
    target = 2 * sm_count()
    shapes = [(16, 64, 128, 4, 4), (16, 32, 128, 2, 4), (16, 128, 128, 4, 3), (32, 64, 128, 4, 4),
              (32, 128, 128, 4, 3), (64, 64, 128, 4, 3), (64, 128, 64, 4, 3), (128, 128, 64, 8, 3),
              (128, 256, 64, 8, 3)]
    bm_cap = max(16, 1 << (m - 1).bit_length())
    out = []
    for bm, bn, bk, warps, stages in shapes:
        if bm > bm_cap or (m >= 128 and bm < 32):
            continue
        tiles = -(-m // bm) * -(-n // bn)
        split = _split_for(tiles, -(-k // bk), target)
        for s in dict.fromkeys((split, 1)):
            out.append(Config(bn, bk, warps, s, bm, stages))
            out.append(Config(bn, bk, warps, s, bm, stages, expand=True))
    if m > DEQUANT_MIN_ROWS:  # the weight written out once costs as much as many rows' GEMM
        out.append(Config(block_n=128, block_k=32, num_warps=4, dequant=True))
    return out


def rows_bucket(m: int) -> int:
    return 1 << max(0, (m - 1).bit_length())


class ConfigCache:
    """Best config per key, timed on first use (never during graph capture)."""

    def __init__(self):
        self.best: dict[tuple, Config] = {}

    def choose(self, key: tuple, candidates: list[Config], run, tune: bool) -> Config:
        if key in self.best:
            return self.best[key]
        if not tune or len(candidates) == 1 or os.environ.get(TUNE_ENV, "1") == "0":
            return candidates[0]
        from triton.testing import do_bench_cudagraph
        timings = []
        for cfg in candidates:
            try:
                run(cfg)  # compiles outside any capture; a config that cannot compile fails here
                timings.append((do_bench_cudagraph(lambda: run(cfg), rep=10, return_mode="median"), cfg))
            except Exception:  # a config the compiler cannot fit (shared memory): skip it
                continue
        if not timings:
            raise RuntimeError(f"no Triton launch configuration compiled for {key}")
        self.best[key] = min(timings, key=lambda t: t[0])[1]
        return self.best[key]


CACHE = ConfigCache()

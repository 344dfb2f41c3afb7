"""Launch configurations for the Triton kernels: candidates, a default, and a per-shape cache.

The first call of a new (path, rows bucket, K, N, format) on a GPU times every
candidate replayed from a CUDA graph (``triton.testing.do_bench_cudagraph``, median)
and keeps the fastest, for the process and in ``$QUANTLLM_CACHE/triton_tuning.json``
for later processes on the same GPU, Triton and PyTorch. Timed eagerly, each call would
carry ~80 us of Python launch work, more than most of these kernels run, and the
pick would be noise (an H100 once chose a 41 us config for M=4 on 4096x4096 where
the M=16 pick ran in 16 us). While a CUDA graph is being captured, or under the
interpreter, or with $QUANTLLM_TRITON_TUNE=0, nothing is timed: the first
candidate (the heuristic default) is used.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cache import cache_root

TUNE_ENV = "QUANTLLM_TRITON_TUNE"  # "0": take the first (heuristic) candidate, time nothing
TUNING_FILE = "triton_tuning.json"  # under $QUANTLLM_CACHE (or ~/.cache/quantllm)

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


def graph_time(run, cfg: Config) -> float:
    """Median ms of ``run(cfg)`` replayed from a CUDA graph (compiled first, outside any capture,
    so a config the compiler cannot fit fails here)."""
    from triton.testing import do_bench_cudagraph

    run(cfg)
    return do_bench_cudagraph(lambda: run(cfg), rep=10, return_mode="median")


@functools.lru_cache(maxsize=1)
def _fingerprint() -> str:
    """What a timing depends on besides the key: the GPU, the compiler stack and our kernels' source."""
    import triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no-gpu"
    here = Path(__file__).parent
    source = hashlib.sha1(b"".join(p.read_bytes() for p in sorted(here.glob("triton_*.py")))).hexdigest()[:12]
    return f"{gpu} | triton {triton.__version__} | torch {torch.__version__} | kernels {source}"


class ConfigCache:
    """Best config per key: kept in memory for the process, and in ``path`` (JSON) for later
    processes on the same GPU and software, so each shape is timed once per machine. Nothing is
    timed during graph capture, under the interpreter or with $QUANTLLM_TRITON_TUNE=0; a file
    that cannot be read or written only costs a re-tune, with a warning."""

    def __init__(self, path: Path | None = None, timer=graph_time, fingerprint=None, file_name: str = TUNING_FILE):
        self.best: dict[tuple, Config] = {}
        self.path = path  # None: cache_root() / file_name, looked up at first use
        self.timer = timer
        self.fingerprint = fingerprint or _fingerprint  # the CUDA kernel keys by its own sources
        self.file_name = file_name

    def _file(self) -> Path:
        return self.path or cache_root() / self.file_name

    def _saved(self) -> dict:
        try:
            return json.loads(self._file().read_text())
        except (FileNotFoundError, NotADirectoryError):  # nothing saved there (yet)
            return {}
        except (OSError, ValueError) as exc:
            warnings.warn(f"ignoring the Triton tuning cache {self._file()}: {exc}")
            return {}

    def _save(self, skey: str, label: str) -> None:
        path = self._file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            saved = {**self._saved(), skey: label}
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(saved, indent=0, sort_keys=True))
            os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        except OSError as exc:
            warnings.warn(f"could not write the Triton tuning cache {path}: {exc}")

    def choose(self, key: tuple, candidates: list[Config], run, tune: bool) -> Config:
        if key in self.best:
            return self.best[key]
        if not tune or len(candidates) == 1 or os.environ.get(TUNE_ENV, "1") == "0":
            return candidates[0]
        skey = f"{self.fingerprint()} | {key}"
        by_label = {c.label(): c for c in candidates}
        saved = self._saved().get(skey)
        if saved in by_label:  # a label no longer among the candidates is timed again
            self.best[key] = by_label[saved]
            return self.best[key]
        timings = []
        for cfg in candidates:
            try:
                timings.append((self.timer(run, cfg), cfg))
            except Exception:  # a config the compiler cannot fit (shared memory): skip it
                continue
        if not timings:
            raise RuntimeError(f"no Triton launch configuration compiled for {key}")
        self.best[key] = min(timings, key=lambda t: t[0])[1]
        self._save(skey, self.best[key].label())
        return self.best[key]


CACHE = ConfigCache()

"""CudaKernel: the tensor-core kernel of the registry for int4 / nf4 / fp4 / int8 weights (sm_80+).

The weight is re-laid once at construction (``cuda_weight``); each call is one launch of the
fused dequantize + ``mma.sync`` kernel (``csrc/cuda_qmm.cuh``), or for up to 16 rows of the
few-row kernel that streams the same layout through registers (``csrc/cuda_gemv.cuh``), or,
where the tuner measures it faster (many rows), a dequantize kernel followed by cuBLAS. Launch configurations (tile shape,
K splits) are chosen per (rows bucket, shape, format) by timing the candidates replayed from a
CUDA graph, kept in ``$QUANTLLM_CACHE/cuda_tuning.json``; a table shipped for known GPUs
(``cuda_defaults.json``) answers first, so first use of a common model times little.
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import cuda_build
from .base import Kernel, LayerSpec, TORCH_DTYPES
from .cuda_weight import CudaWeight, group_reason, layout_kind, make_weight
from .triton_tuning import ConfigCache, _split_for, rows_bucket, sm_count
from ..errors import BuildError, NoKernelError
from ..formats import get_format

# (BN, BK, warps) of csrc/cuda_qmm.cu's Shape<i>, by index.
TILES = ((128, 128, 8), (256, 64, 8), (64, 256, 8), (128, 64, 4), (256, 128, 8), (64, 64, 4))
# (BN, BK, blocks an SM's registers hold) of the wgmma kernel's WgShape<i> (csrc/cuda_qmm.cu; 128 threads
# per 64 columns), by index. Tiles of two blocks an SM only to WG_SHARED_ROWS rows a block.
WG_TILES = ((64, 128, 1), (128, 64, 1), (128, 128, 1), (128, 128, 2))
WG_SHARED_ROWS = 64
WG_MIN_ROWS = 2  # one row is the few-row kernel's
WG_ROWS = (16, 32, 64, 128, 256)  # rows of x one wgmma block takes (the instruction's N)
WG_SMEM = 200 * 1024  # shared memory the x tiles of its 4 stages may take (csrc/cuda_qmm.cu)
WG_KINDS = ("int4", "cb4")
WGMMA_ENV = "QUANTLLM_CUDA_WGMMA"  # "0": leave the wgmma kernel out
SPLIT_MAX_ROWS = 64  # K splits meet in a shared [64, N] fp32 workspace: only for one row block
DEQUANT_MIN_ROWS = 128  # from here the dequantize + cuBLAS path is a candidate
KEPT_MIN_ROWS = 32  # ... or from here when the dequantized weight is kept (DENSE_CACHE_ENV)
GEMV_MAX_ROWS = 16  # the few-row kernel takes x as one or two 8-row mma operands
GEMV_CLUSTERS = (1, 2, 4, 8)  # blocks along K that meet in distributed shared memory (sm_90+; 1 elsewhere)
GEMV_BLOCKS_PER_SM = 3  # what its 4-warp blocks fit per SM by registers (168 a thread)
# and its second register budget, to 8 rows: 4 blocks an SM (128 registers, half the batch); the tuner
# picks between them per shape (neither wins everywhere on the H200: benchmarks/gpu_gemv_cost.py)
GEMV_BLOCKS_PER_SM_SMALL = 4
GEMV_SMALL_MAX_ROWS = 8
GEMV_WARPS = 4  # warps a block of the few-row kernel (csrc/cuda_gemv.cuh)
DEFAULTS_FILE = Path(__file__).with_name("cuda_defaults.json")
SHIPPED_ENV = "QUANTLLM_CUDA_SHIPPED"  # "0": ignore the shipped table and time every new key
# "1": the dequantize + cuBLAS path keeps each layer's dequantized weight (N x K x 2 bytes, ~4x the
# int4 layer) after its first use, so many-row calls cost what bf16 costs; off by default
DENSE_CACHE_ENV = "QUANTLLM_CUDA_DENSE_CACHE"
GEMV_ENV = "QUANTLLM_CUDA_GEMV"  # "0": leave the few-row kernel out (the mma kernel takes every row count)


@dataclass(frozen=True)
class CudaConfig:
    tile: int
    splits: int = 1
    dequant: bool = False
    cluster: int = 0  # > 0: the few-row kernel with this many blocks along K per 64 columns
    # (the few-row kernel with cluster 1 and splits > 1: that many blocks along K meeting in the workspace)
    mn: int = 0  # > 0: the wgmma kernel (tile indexes WG_TILES), this many rows of x a block
    occupancy: int = 0  # the few-row kernel's register budget in blocks an SM (0: GEMV_BLOCKS_PER_SM)

    def label(self) -> str:
        if self.dequant:
            return "dequant+mm"
        if self.cluster:
            budget = f"b{self.occupancy}" if self.occupancy else ""
            return (f"gemv:s{self.splits}" if self.splits > 1 else f"gemv:c{self.cluster}") + budget
        if self.mn:
            bn, bk, _ = WG_TILES[self.tile]
            return f"wg{self.tile}:n{bn}k{bk}m{self.mn}x{self.splits}"
        bn, bk, warps = TILES[self.tile]
        return f"t{self.tile}:n{bn}k{bk}w{warps}x{self.splits}"


def _tile_fits(tile: int, n: int, k: int, group: int) -> bool:
    bn, bk, _ = TILES[tile]
    group_ok = bk % group == 0 if group < bk else group % bk == 0
    return n % bn == 0 and k % bk == 0 and group_ok


def _clusters_ok() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)


def gemv_candidates(m: int, n: int, k: int, group: int) -> list[CudaConfig]:
    """The few-row kernel's configs, the one nearest one full wave of blocks first: K split over a
    cluster (sm_90), or over blocks meeting in the workspace (no cluster to co-schedule, any split);
    then, to 8 rows, the same for the 4-blocks-an-SM register budget."""
    if m > GEMV_MAX_ROWS or k % 16 or (group < k and group < 16) or os.environ.get(GEMV_ENV) == "0":
        return []
    out = _gemv_configs(n, k, GEMV_BLOCKS_PER_SM, 0)
    if m <= GEMV_SMALL_MAX_ROWS:
        out += _gemv_configs(n, k, GEMV_BLOCKS_PER_SM_SMALL, GEMV_BLOCKS_PER_SM_SMALL)
    return out


def _gemv_configs(n: int, k: int, per_sm_max: int, occupancy: int) -> list[CudaConfig]:
    clusters = GEMV_CLUSTERS if _clusters_ok() else (1,)
    wave = per_sm_max * sm_count()
    best = max([c for c in clusters if c * (n // 64) <= wave] or [1])
    out = [CudaConfig(0, cluster=c, occupancy=occupancy) for c in sorted(clusters, key=lambda c: c != best)]
    # splits that fill one wave, and ~2 blocks an SM; each warp keeps >= 2 bands (the kernel's 4 warps)
    for per_sm in (per_sm_max, 2):
        s = min(per_sm * sm_count() // (n // 64), k // 16 // (2 * GEMV_WARPS))
        if s > 1 and CudaConfig(0, s, cluster=1, occupancy=occupancy) not in out:
            out.append(CudaConfig(0, s, cluster=1, occupancy=occupancy))
    return out


def _wgmma_ok() -> bool:
    return (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
            and os.environ.get(WGMMA_ENV) != "0")


def wgmma_candidates(m: int, n: int, k: int, group: int, kind: str) -> list[CudaConfig]:
    """The wgmma kernel's configs (sm_90 only): up to 64 rows one row block with K splits as the mma
    kernel's; beyond, row blocks of 64, 128 or 256 rows (every block decodes its columns' weight)."""
    if m < WG_MIN_ROWS or kind not in WG_KINDS or not _wgmma_ok():
        return []
    out = []
    fit = min(r for r in WG_ROWS if r >= min(m, WG_ROWS[-1]))
    for tile, (bn, bk, blocks) in enumerate(WG_TILES):
        group_ok = bk % group == 0 if group < bk else (group >= k or group % bk == 0)
        if n % bn or k % bk or not group_ok:
            continue
        for mn in ((fit,) if m <= SPLIT_MAX_ROWS else [r for r in WG_ROWS if 64 <= r <= fit]):
            if 4 * mn * bk * 2 > WG_SMEM or (blocks > 1 and mn > WG_SHARED_ROWS):
                continue
            if m > SPLIT_MAX_ROWS:
                out.append(CudaConfig(tile, mn=mn))
                continue
            split = _split_for(n // bn, k // bk, sm_count())
            for s in dict.fromkeys((split, split * 2 if split * 2 <= k // bk else split)):
                out.append(CudaConfig(tile, s, mn=mn))
    return out


def candidates(m: int, n: int, k: int, group: int, kept: bool = False, kind: str = "int4") -> list[CudaConfig]:
    """Launch configs for ``m`` rows, the heuristic default first (``kept``: the dequantized weight
    is kept after its first use, which makes dequantize + cuBLAS a candidate from fewer rows)."""
    out = gemv_candidates(m, n, k, group)
    rows = 16 if m <= 16 else 32 if m <= 32 else 64
    for tile in range(len(TILES)):
        if not _tile_fits(tile, n, k, group):
            continue
        bn, bk, _ = TILES[tile]
        if m > SPLIT_MAX_ROWS:
            out.append(CudaConfig(tile))
            continue
        # ~1 block per SM fills the GPU when each keeps ~40 KB in flight; try that and twice that
        # (on an H200 fewer splits never won by more than noise: 4 shapes x 5 row counts)
        split = _split_for(-(-m // rows) * (n // bn), k // bk, sm_count())
        for s in dict.fromkeys((split, split * 2 if split * 2 <= k // bk else split)):
            out.append(CudaConfig(tile, s))
    out += wgmma_candidates(m, n, k, group, kind)
    if m >= (KEPT_MIN_ROWS if kept else DEQUANT_MIN_ROWS) and out:
        out.append(CudaConfig(0, dequant=True))
    return out


def _dense_kept() -> bool:
    return os.environ.get(DENSE_CACHE_ENV) == "1"


@functools.lru_cache(maxsize=1)
def _fingerprint() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no-gpu"
    return f"{gpu} | torch {torch.__version__} | cuda kernels {cuda_build._source_hash()} {TILES} {WG_TILES}"


@functools.lru_cache(maxsize=1)
def _shipped() -> dict:
    """{GPU name: {key: label}} measured on that GPU (benchmarks/gpu_speed.py --write-cuda-defaults)."""
    try:
        return json.loads(DEFAULTS_FILE.read_text())
    except FileNotFoundError:
        return {}


CACHE = ConfigCache(fingerprint=_fingerprint, file_name="cuda_tuning.json")
_WORKSPACES: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}


def workspace(device: torch.device, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split-K workspace of a device: fp32 sums ``[64, >= n]`` and one counter per 64 columns,
    zero, and left zero by every launch. One per device (launches on a stream run one at a time);
    a larger one replaces it for new launches, the old stays alive for graphs that captured it."""
    held = _WORKSPACES.setdefault(device.index or 0, [])
    if not held or held[-1][1].numel() < n // 64:
        held.append((torch.zeros(SPLIT_MAX_ROWS * n, device=device, dtype=torch.float32),
                     torch.zeros(n // 64, device=device, dtype=torch.int32)))
    return held[-1]


@functools.lru_cache(maxsize=1)
def _several_gpus() -> bool:
    return torch.cuda.device_count() > 1


def _arch() -> str:
    major, minor = torch.cuda.get_device_capability()
    return f"{major}{minor}"


class CudaKernel(Kernel):
    name = "cuda"

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str]:
        if spec.device_type != "cuda":
            return False, f"CUDA kernels run on CUDA devices, not {spec.device_type}"
        if not torch.cuda.is_available():
            return False, "no CUDA device is visible to PyTorch"
        if torch.cuda.get_device_capability() < (8, 0):
            return False, "needs compute capability 8.0+ (mma.sync with bf16)"
        if spec.compute_dtype not in ("fp16", "bf16"):
            return False, f"compute_dtype {spec.compute_dtype!r}: the CUDA kernel takes fp16 or bf16 activations"
        kind = layout_kind(get_format(spec.weight_dtype))
        if kind is None:
            return False, f"{spec.weight_dtype}: no CUDA decoder (int4, nf4, fp4_e2m1, int8 only)"
        if spec.out_features % 64 or spec.in_features % 64:
            return False, f"{spec.in_features}x{spec.out_features}: needs in and out features divisible by 64"
        reason = group_reason(spec.group_size, spec.in_features)
        if reason:
            return False, reason
        try:
            cuda_build.load_library(spec.compute_dtype == "bf16", kind, spec.zero_mode, _arch())
        except (BuildError, OSError) as exc:
            return False, f"CUDA kernel library unavailable: {str(exc).splitlines()[0]}"
        return True, "fused dequantize + mma.sync (weights re-laid into fragments once)"

    def __init__(self, packed, spec: LayerSpec):
        super().__init__(packed, spec)
        if not packed.qweight.is_cuda:  # host pointers would reach the kernel: an illegal address, not an error
            raise ValueError(f"the CUDA kernel needs the layer's weights on a CUDA device, not "
                             f"{packed.qweight.device}: move the model first (model.to('cuda'))")
        self.dtype = TORCH_DTYPES[spec.compute_dtype]
        self.weight: CudaWeight = make_weight(packed, self.dtype)
        self.lib = cuda_build.load_library(self.dtype == torch.bfloat16, self.weight.kind, self.weight.zero_mode,
                                           _arch())
        self.device = self.weight.qweight.device
        cuda_build.preload(self.lib, self.device.index or 0)  # no kernel may first load inside a graph capture
        self._ws = workspace(self.device, self.weight.out_features)
        self._configs: dict[int, CudaConfig] = {}  # rows -> tuned config
        self._args: dict[tuple, cuda_build.QmmArgs] = {}  # (rows, config) -> launch arguments
        self.keep_dense = _dense_kept()  # keep the dequantized weight after its first use
        self._dense: torch.Tensor | None = None

    # -- launches ---------------------------------------------------------------------------
    def _make_args(self, m: int, cfg: CudaConfig) -> cuda_build.QmmArgs:
        w = self.weight
        bk = WG_TILES[cfg.tile][1] if cfg.mn else TILES[cfg.tile][1]
        per_split = -(-(w.in_features // bk) // cfg.splits) * bk
        splits = cfg.splits if cfg.cluster else -(-w.in_features // per_split)  # few-row kernel: blocks along K
        ws, counters = self._ws
        zeros = w.zeros.data_ptr() if w.zeros is not None else None
        return cuda_build.QmmArgs(None, w.qweight.data_ptr(), w.scales.data_ptr(), zeros, None, ws.data_ptr(),
                                  counters.data_ptr(), m, w.out_features, w.in_features, w.group, w.group_shift,
                                  per_split, splits, (ctypes.c_uint32 * 8)(*w.lut))

    def _launch(self, x: torch.Tensor, cfg: CudaConfig) -> torch.Tensor:
        """``x``: contiguous, 16-byte aligned ``[M, K]`` in the compute dtype, weight's column order."""
        m, w = x.shape[0], self.weight
        key = (m, cfg)
        args = self._args.get(key)
        if args is None:
            args = self._args[key] = self._make_args(m, cfg)
        stream = torch.cuda.current_stream(x.device).cuda_stream
        if _several_gpus():  # the library's runtime keeps its own current device
            self._check(self.lib.qmm_set_device(x.device.index))
        if cfg.dequant:
            wd = self._dense
            if wd is None:
                wd = torch.empty((w.out_features, w.in_features), device=x.device, dtype=self.dtype)
                self._check(self.lib.qmm_dequant(ctypes.byref(args), wd.data_ptr(), stream))
                if self.keep_dense and not torch.cuda.is_current_stream_capturing():
                    self._dense = wd
            return F.linear(x, wd)
        out = torch.empty((m, w.out_features), device=x.device, dtype=self.dtype)
        args.x, args.out = x.data_ptr(), out.data_ptr()
        if cfg.cluster:
            self._check(self.lib.qmm_gemv(ctypes.byref(args), cfg.cluster, cfg.occupancy or GEMV_BLOCKS_PER_SM, stream))
        elif cfg.mn:
            self._check(self.lib.qmm_wgmma(ctypes.byref(args), cfg.tile, cfg.mn, stream))
        else:
            self._check(self.lib.qmm_run(ctypes.byref(args), cfg.tile, stream))
        return out

    def _check(self, err: int) -> None:
        if err:
            raise NoKernelError(f"CUDA kernel launch failed: {self.lib.qmm_error_string(err).decode()}; "
                                f"run this layer with kernel='triton'")

    def dequantize(self) -> torch.Tensor:
        """The weight as the kernel decodes it, ``[N, K]`` in the compute dtype and the weight's column
        order (act-order permuted), for checking the layout on the device."""
        w = self.weight
        wd = torch.empty((w.out_features, w.in_features), device=self.device, dtype=self.dtype)
        args = self._make_args(1, CudaConfig(0))
        self._check(self.lib.qmm_dequant(ctypes.byref(args), wd.data_ptr(), torch.cuda.current_stream().cuda_stream))
        return wd

    # -- choice -----------------------------------------------------------------------------
    def config_for(self, x: torch.Tensor) -> CudaConfig:
        m, w = x.shape[0], self.weight
        cands = candidates(m, w.out_features, w.in_features, w.group, self.keep_dense, w.kind)
        if not cands:
            raise NoKernelError(f"no CUDA tile fits {w.in_features}x{w.out_features} group {w.group}; "
                                f"run this layer with kernel='triton'")
        path = "cuda dense kept" if self.keep_dense else "cuda"  # kept weights change the winners: own picks
        key = (path, rows_bucket(m), w.in_features, w.out_features, w.kind, w.zero_mode, w.group, str(self.dtype))
        if key not in CACHE.best and os.environ.get(SHIPPED_ENV, "1") != "0":
            label = _shipped().get(torch.cuda.get_device_name(x.device), {}).get(str(key))
            chosen = [c for c in cands if c.label() == label]
            if chosen:
                CACHE.best[key] = chosen[0]
        capturing = torch.cuda.is_current_stream_capturing()
        return CACHE.choose(key, cands, lambda c: self._launch(x, c), tune=not capturing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, w = x.shape[:-1], self.weight
        x2 = x.reshape(-1, x.shape[-1]).to(self.dtype)
        if w.perm is not None:
            x2 = x2.index_select(1, w.perm)
        x2 = x2.contiguous()
        if x2.data_ptr() % 16:  # a view into the middle of a tensor: cp.async needs 16-byte rows
            x2 = x2.clone()
        m = x2.shape[0]
        if m == 0:
            return x2.new_empty((*lead, w.out_features))
        cfg = self._configs.get(m)
        if cfg is None:
            cfg = self.config_for(x2)
            if not torch.cuda.is_current_stream_capturing():
                self._configs[m] = cfg  # an untuned default chosen during capture is not kept
        return self._launch(x2, cfg).reshape(*lead, w.out_features)

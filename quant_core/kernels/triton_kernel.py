"""TritonKernel: the CUDA kernel of the registry for int2/int4/int8, nf4 and fp4_e2m1 weights.

Few rows (decode, M <= ``GEMV_MAX_ROWS``) go through the split-K GEMV, more
through the tiled GEMM or, where the tuner measures it faster (long prefills),
through a dequantized weight and cuBLAS; launch configs are tuned per shape on
first use (``triton_tuning``). The weight is repacked once at construction
(``triton_layout``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from .base import Kernel, LayerSpec, TORCH_DTYPES
from .triton_codebook import codebook_ptx
from .triton_dequant import dequant_kernel
from .triton_gemm import gemm_kernel
from .triton_gemv import gemv_kernel
from .triton_jit import interpreting
from .triton_layout import SUPPORTED_BITS, repack
from .triton_tuning import CACHE, Config, gemm_candidates, gemv_candidates, rows_bucket
from ..primitives import per_channel

# Measured on an H100 (benchmarks/results/gpu_speed.md): the GEMV at M=4 (rows as a grid axis,
# each row's programs re-reading the weight) took 1.1-2.3x the GEMM's time at M=16, on every
# Llama-3-8B shape, so only single-row calls take the GEMV.
GEMV_MAX_ROWS = 1
REDUCE_LAST_ARRIVER = 2  # store_split's mode: no memset or cast kernels around a split-K launch
FUSED_MAX_ROWS = 16  # split-K launches of up to this many rows reduce in a per-layer workspace


@dataclass(frozen=True)
class Plan:
    """One launch: the kernel, its grid, scalar arguments and compile-time flags, and how
    split-K partial sums meet (``triton_jit.store_split``'s REDUCE)."""
    kernel: object
    grid: tuple
    scalars: tuple
    kwargs: dict
    reduce: int


class TritonKernel(Kernel):
    name = "triton"

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str]:
        if spec.device_type != "cuda":
            return False, f"Triton kernels run on CUDA devices, not {spec.device_type}"
        if spec.bits not in SUPPORTED_BITS:
            return False, (f"{spec.weight_dtype} packs {spec.bits}-bit codes across 32-bit words; "
                           f"Triton kernels read {SUPPORTED_BITS}-bit codes")
        if spec.compute_dtype not in TORCH_DTYPES:
            return False, (f"compute_dtype {spec.compute_dtype!r} (quantized activations) is not "
                           f"implemented in Triton; use bf16/fp16/fp32")
        per_word = 32 // spec.bits
        if not per_channel(spec.group_size) and spec.group_size % per_word:
            return False, (f"group_size {spec.group_size} splits the {per_word} codes of a 32-bit word "
                           f"between groups; use a multiple of {per_word}")
        if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0):
            return False, "needs compute capability 8.0+ (Ampere or newer) for bf16 tensor cores"
        return True, "Triton split-K GEMV (M = 1) / tiled GEMM, weight repacked once"

    def __init__(self, packed, spec: LayerSpec):
        super().__init__(packed, spec)
        self.weight = repack(packed)
        self.dtype = TORCH_DTYPES[spec.compute_dtype]
        self._plans: dict[int, Plan] = {}  # rows -> launch plan
        self._ws: tuple[torch.Tensor, torch.Tensor] | None = None
        # 4-bit codebooks: levels looked up in registers (inline PTX; not under the interpreter)
        self._cb_asm = codebook_ptx(packed.fmt.levels) if (
            packed.fmt.is_codebook and packed.fmt.bits == 4 and not interpreting()) else ""
        w = self.weight  # absent tensors are never read (compile-time flags): pass any pointer
        self._zeros, self._g_idx, self._lut = (t if t is not None else w.qweight for t in (w.zeros, w.g_idx, w.lut))

    # -- launches -------------------------------------------------------------------------
    # A launch plan (grid, scalar arguments, compile-time flags) depends only on the rows and
    # the config, so it is built once: a decode step then costs one dict lookup in Python.
    def _flags(self, tile_cols: int) -> dict:
        w = self.weight
        one_group = w.g_idx is None and (w.group_cols >= w.in_features or w.group_cols % tile_cols == 0)
        return dict(BITS=w.bits, ZMODE=w.zmode, SYM_ZERO=w.sym_zero, CODEBOOK=w.lut is not None,
                    HAS_GIDX=w.g_idx is not None, ONE_GROUP_PER_TILE=one_group)

    def _plan(self, path: str, m: int, cfg: Config) -> "Plan":
        w = self.weight
        n, k = w.out_features, w.in_features
        if path == "gemv":
            words = triton.cdiv(triton.cdiv(w.n_words, cfg.split_k), cfg.block_k) * cfg.block_k
            splits = triton.cdiv(w.n_words, words)
            reduce = self._reduce_mode(splits, m)
            # every tile full: no bounds masks (H100, int4 GEMV: 21.4 vs 22.2 us on 4096x14336,
            # 129.5 vs 137.7 us on the 4096x128256 lm_head)
            even = k == w.n_words * w.codes_per_word and w.n_words % words == 0 and n % cfg.block_n == 0
            kwargs = dict(**self._flags(cfg.block_k * w.codes_per_word), BLOCK_N=cfg.block_n,
                          BLOCK_KW=cfg.block_k, REDUCE=reduce, CB_ASM=self._cb_asm, EVEN=even,
                          num_warps=cfg.num_warps)
            return Plan(gemv_kernel, (m, triton.cdiv(n, cfg.block_n), splits),
                        (n, k, w.n_words, w.group_cols, k, n, words), kwargs, reduce)
        if cfg.dequant:
            flags = self._flags(cfg.block_k)
            del flags["ONE_GROUP_PER_TILE"]
            kwargs = dict(**flags, BLOCK_K=cfg.block_k, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps)
            return Plan(dequant_kernel, (triton.cdiv(k, cfg.block_k), triton.cdiv(n, cfg.block_n)),
                        (n, k, w.group_cols), kwargs, 0)
        per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
        splits = triton.cdiv(k, per_split)
        reduce = self._reduce_mode(splits, m)
        kwargs = dict(**self._flags(cfg.block_k), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                      BLOCK_K=cfg.block_k, GROUP_M=8, EXPAND=cfg.expand, REDUCE=reduce,
                      DOT_F32=self._dot_f32(self.dtype), CB_ASM=self._cb_asm, num_warps=cfg.num_warps,
                      num_stages=cfg.num_stages)
        return Plan(gemm_kernel, (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), splits),
                    (m, n, k, w.group_cols, k, n, per_split), kwargs, reduce)

    @staticmethod
    def _reduce_mode(splits: int, m: int) -> int:
        # Measured on an H100 (GEMV, int4 g128): the last-arriver reduction took 9.8 / 6.1 / 21.6 us
        # on 4096x4096 / 4096x1024 / 14336x4096 where atomics into a zeroed buffer plus a cast took
        # 11.0 / 7.0 / 22.8 us (CUDA-graph replay): the memset and cast kernels cost more than it.
        if splits == 1:
            return 0
        return REDUCE_LAST_ARRIVER if m <= FUSED_MAX_ROWS else 1

    def _workspace(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The split-K workspace of launches up to FUSED_MAX_ROWS rows: fp32 partial sums
        ``[rows, N]`` and a counter per output tile (tiles are at least 16 x 16), zeroed once;
        every launch leaves it zeroed again, so all plans share it (64 bytes per output feature)."""
        if self._ws is None:
            n = self.weight.out_features
            self._ws = (torch.zeros(FUSED_MAX_ROWS * n, device=device, dtype=torch.float32),
                        torch.zeros(triton.cdiv(FUSED_MAX_ROWS, 16) * triton.cdiv(n, 16), device=device,
                                    dtype=torch.int32))
        return self._ws

    def _launch(self, x: torch.Tensor, plan: "Plan") -> torch.Tensor:
        """``x``: contiguous ``[M, K]`` in the compute dtype (the plan assumes those strides)."""
        w = self.weight
        if plan.kernel is dequant_kernel:
            wt = torch.empty((w.in_features, w.out_features), device=x.device, dtype=self.dtype)
            plan.kernel[plan.grid](w.qweight, w.scales, self._zeros, self._g_idx, self._lut, wt,
                                   *plan.scalars, **plan.kwargs)
            return torch.mm(x, wt)
        shape = (x.shape[0], w.out_features)
        # REDUCE 1: split-K partial sums meet through fp32 atomic adds into a zeroed buffer
        out = torch.zeros(shape, device=x.device, dtype=torch.float32) if plan.reduce == 1 else \
            torch.empty(shape, device=x.device, dtype=self.dtype)
        acc, counts = self._workspace(x.device) if plan.reduce == REDUCE_LAST_ARRIVER else (out, out)
        plan.kernel[plan.grid](x, w.qweight, w.scales, self._zeros, self._g_idx, self._lut, out, acc, counts,
                               *plan.scalars, **plan.kwargs)
        return out.to(self.dtype) if plan.reduce == 1 else out

    def _run_gemv(self, x: torch.Tensor, cfg: Config) -> torch.Tensor:
        return self._launch(x, self._plan("gemv", x.shape[0], cfg))

    def _run_gemm(self, x: torch.Tensor, cfg: Config) -> torch.Tensor:
        return self._launch(x, self._plan("gemm", x.shape[0], cfg))

    @staticmethod
    def _dot_f32(dtype: torch.dtype) -> bool:
        # fp32 stays exact (no tf32); Triton's interpreter gets bf16 dots wrong (3.6-3.9)
        return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting())

    # -- choice -----------------------------------------------------------------------------
    def config_for(self, x: torch.Tensor) -> tuple[str, Config]:
        """The path and (tuned) launch config for ``x``'s row count."""
        m = x.shape[0]
        path = "gemv" if m <= GEMV_MAX_ROWS else "gemm"
        w, interp = self.weight, interpreting()
        if path == "gemv":
            cands = gemv_candidates(m, w.out_features, w.n_words, interp)
        else:
            cands = gemm_candidates(m, w.out_features, w.in_features, interp)
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        if x.is_cuda and not capturing and m <= FUSED_MAX_ROWS:
            self._workspace(x.device)  # made outside the tuner's graphs, which would own its memory
        key = (path, rows_bucket(m), w.in_features, w.out_features, w.bits, w.zmode,
               w.lut is not None, w.g_idx is not None, w.group_cols, x.dtype)
        run = lambda c: self._launch(x, self._plan(path, m, c))  # noqa: E731
        return path, CACHE.choose(key, cands, run, tune=not interp and not capturing)

    def _plan_for(self, x: torch.Tensor) -> "Plan":
        plan = self._plans.get(x.shape[0])
        if plan is None:
            path, cfg = self.config_for(x)
            plan = self._plan(path, x.shape[0], cfg)
            if not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
                self._plans[x.shape[0]] = plan  # an untuned default is not kept
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).to(self.dtype).contiguous()
        if x2.shape[0] == 0:
            return x2.new_empty((*lead, self.weight.out_features))
        out = self._launch(x2, self._plan_for(x2))
        return out.reshape(*lead, self.weight.out_features)

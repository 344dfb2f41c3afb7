"""TritonKernel: the CUDA kernel of the registry for int2/int4/int8, nf4 and fp4_e2m1 weights.

Few rows (decode, M <= ``GEMV_MAX_ROWS``) go through the split-K GEMV, more
through the tiled GEMM; launch configs are tuned per shape on first use
(``triton_tuning``). The weight is repacked once at construction (``triton_layout``).
"""
from __future__ import annotations

import torch
import triton

from .base import Kernel, LayerSpec, TORCH_DTYPES
from .triton_gemm import gemm_kernel
from .triton_gemv import gemv_kernel
from .triton_jit import interpreting
from .triton_layout import SUPPORTED_BITS, repack
from .triton_tuning import CACHE, Config, gemm_candidates, gemv_candidates, rows_bucket

GEMV_MAX_ROWS = 4


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
        if spec.group_size > 0 and spec.group_size % per_word:
            return False, (f"group_size {spec.group_size} splits the {per_word} codes of a 32-bit word "
                           f"between groups; use a multiple of {per_word}")
        if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0):
            return False, "needs compute capability 8.0+ (Ampere or newer) for bf16 tensor cores"
        return True, "Triton split-K GEMV (M <= 4) / tiled GEMM, weight repacked once"

    def __init__(self, packed, spec: LayerSpec):
        super().__init__(packed, spec)
        self.weight = repack(packed)
        self.dtype = TORCH_DTYPES[spec.compute_dtype]
        self._configs: dict[int, Config] = {}  # rows -> config, so a decode step skips the lookup

    # -- launches -------------------------------------------------------------------------
    def _common(self, x: torch.Tensor, out: torch.Tensor):
        w = self.weight
        dummy = w.qweight
        return (x, w.qweight, w.scales, dummy if w.zeros is None else w.zeros,
                dummy if w.g_idx is None else w.g_idx, dummy if w.lut is None else w.lut, out)

    def _flags(self, tile_cols: int) -> dict:
        w = self.weight
        one_group = w.g_idx is None and (w.group_cols >= w.in_features or w.group_cols % tile_cols == 0)
        return dict(BITS=w.bits, ZMODE=w.zmode, SYM_ZERO=w.sym_zero, CODEBOOK=w.lut is not None,
                    HAS_GIDX=w.g_idx is not None, ONE_GROUP_PER_TILE=one_group)

    def _out(self, m: int, split: int) -> torch.Tensor:
        n = self.weight.out_features
        if split > 1:  # partial sums meet through fp32 atomic adds
            return torch.zeros((m, n), device=self.weight.qweight.device, dtype=torch.float32)
        return torch.empty((m, n), device=self.weight.qweight.device, dtype=self.dtype)

    def _run_gemv(self, x: torch.Tensor, cfg: Config) -> torch.Tensor:
        w = self.weight
        m, kw = x.shape[0], w.n_words
        words = triton.cdiv(triton.cdiv(kw, cfg.split_k), cfg.block_k) * cfg.block_k
        splits = triton.cdiv(kw, words)
        out = self._out(m, splits)
        grid = (m, triton.cdiv(w.out_features, cfg.block_n), splits)
        gemv_kernel[grid](*self._common(x, out), w.out_features, w.in_features, kw, w.group_cols,
                          x.stride(0), out.stride(0), words, **self._flags(cfg.block_k * w.codes_per_word),
                          BLOCK_N=cfg.block_n, BLOCK_KW=cfg.block_k, ATOMIC=splits > 1,
                          num_warps=cfg.num_warps)
        return out

    def _run_gemm(self, x: torch.Tensor, cfg: Config) -> torch.Tensor:
        w = self.weight
        m, k = x.shape[0], w.in_features
        per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
        splits = triton.cdiv(k, per_split)
        out = self._out(m, splits)
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(w.out_features, cfg.block_n), splits)
        gemm_kernel[grid](*self._common(x, out), m, w.out_features, k, w.group_cols,
                          x.stride(0), out.stride(0), per_split, **self._flags(cfg.block_k),
                          BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=8, EXPAND=cfg.expand,
                          ATOMIC=splits > 1, DOT_F32=self._dot_f32(x.dtype),
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return out

    @staticmethod
    def _dot_f32(dtype: torch.dtype) -> bool:
        # fp32 stays exact (no tf32); Triton's interpreter gets bf16 dots wrong (3.6-3.9)
        return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting())

    # -- choice -----------------------------------------------------------------------------
    def config_for(self, x: torch.Tensor) -> tuple[str, Config]:
        m = x.shape[0]
        path = "gemv" if m <= GEMV_MAX_ROWS else "gemm"
        cfg = self._configs.get(m)
        if cfg is not None:
            return path, cfg
        w, interp = self.weight, interpreting()
        if path == "gemv":
            cands = gemv_candidates(m, w.out_features, w.n_words, interp)
            run = lambda c: self._run_gemv(x, c)  # noqa: E731
        else:
            cands = gemm_candidates(m, w.out_features, w.in_features, interp)
            run = lambda c: self._run_gemm(x, c)  # noqa: E731
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        key = (path, rows_bucket(m), w.in_features, w.out_features, w.bits, w.zmode,
               w.lut is not None, w.g_idx is not None, w.group_cols, x.dtype)
        cfg = CACHE.choose(key, cands, run, tune=not interp and not capturing)
        if not capturing:
            self._configs[m] = cfg
        return path, cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).to(self.dtype).contiguous()
        if x2.shape[0] == 0:
            return x2.new_empty((*lead, self.weight.out_features))
        path, cfg = self.config_for(x2)
        out = self._run_gemv(x2, cfg) if path == "gemv" else self._run_gemm(x2, cfg)
        return out.to(self.dtype).reshape(*lead, self.weight.out_features)

"""``H += alpha * x^T x`` from bf16 rows into an fp32 ``H`` on the CPU (csrc/qgram.cpp).

The Hessians of bf16 calibration (GPTQ, QuantEase; AWQ's input statistics) are this product on
every calibration batch. PyTorch has no CPU GEMM from bf16 operands into an fp32 result, so it ran
in fp32 (``addmm_``) over the whole square; this kernel computes one triangle with vdpbf16ps (two
exact bf16 products per fp32 lane) where the CPU has AVX512-BF16, else by widening to fp32 (AVX2).
Products of bf16 values are exact in fp32: against ``x.float().T @ x.float()`` only the order of the
sums differs. ``gram_kernel_reason`` says why it cannot run (then the caller uses ``addmm_``).
"""
from __future__ import annotations

import ctypes

import torch

from .. import cpu_features
from .cpu_build import BuildError, load_library

# the library variants that hold the kernel, best first (every variant builds it)
_VARIANTS = ("avx512_vnni", "avx512", "avx2")


def _variant() -> str | None:
    return next((v for v in _VARIANTS if cpu_features.at_least(v)), None)


def has_dpbf16() -> bool:
    """vdpbf16ps is usable: AVX512-BF16 in the flags and the level not lowered below AVX-512."""
    return cpu_features.at_least("avx512") and "avx512_bf16" in cpu_features.cpu_flags()


def gram_kernel_reason(h: torch.Tensor) -> str:
    """Empty when ``accumulate_gram`` can run on ``h``, else why not."""
    if h.device.type != "cpu" or h.dtype != torch.float32:
        return f"needs an fp32 CPU accumulator, not {h.dtype} on {h.device.type}"
    variant = _variant()
    if variant is None:
        return f"needs AVX2; this CPU's level is {cpu_features.isa_level()}"
    try:
        load_library(variant)
    except (BuildError, OSError, AttributeError) as exc:
        return f"C++ kernels unavailable ({type(exc).__name__}: {exc})"
    return ""


def accumulate_gram(h: torch.Tensor, x: torch.Tensor, alpha: float, dpbf16: bool | None = None) -> None:
    """``h += alpha * x^T x`` in place for ``x [t, k]`` (rounded to bf16 if it is not) and a symmetric
    contiguous fp32 ``h [k, k]``; ``dpbf16=False`` forces the widening path (tests)."""
    k = h.shape[0]
    if h.shape != (k, k) or not h.is_contiguous() or x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"gram: h {tuple(h.shape)} must be a contiguous square over x's {tuple(x.shape)} columns")
    x = x.to(torch.bfloat16).contiguous()
    use_dp = has_dpbf16() if dpbf16 is None else (dpbf16 and has_dpbf16())
    load_library(_variant()).qgram_bf16(ctypes.c_void_p(h.data_ptr()), k, ctypes.c_void_p(x.data_ptr()), k,
                                        x.shape[0], k, alpha, int(use_dp), torch.get_num_threads())

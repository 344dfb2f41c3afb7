"""How our Triton kernels are compiled (for the GPU, or through Triton's interpreter), and
the ``@jit`` device helpers the GEMV and GEMM kernels share (inlined where they are called).

Triton decides compiled-versus-interpreted when a function is decorated, from
``TRITON_INTERPRET``. We also interpret when no CUDA device exists, so that the
kernels run on CPU tensors in CI even if Triton was imported before the tests set
the variable (the interpreter is slow: keep those shapes small).
"""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or not torch.cuda.is_available()


if interpreting():
    # Triton's own helpers (tl.zeros, tl.sum, ...) are decorated when triton is first
    # imported; they are interpretable only if the variable is set by then.
    os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

try:  # grid dependency control (Triton 3.3+): kernels launched with launch_pdl=True call them
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: E402, F401
except ImportError:
    gdc_launch_dependents = gdc_wait = None


def pdl_launch_supported(device) -> bool:
    """Whether Triton kernels can be launched with programmatic dependent launch (``launch_pdl=True``) on
    ``device``: compiled (not interpreted), a Triton that has the option, a GPU of compute capability 9.0+."""
    if interpreting() or gdc_wait is None or torch.device(device).type != "cuda":
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in CUDAOptions.__dataclass_fields__ and torch.cuda.get_device_capability(device)[0] >= 9


def jit(fn):
    if interpreting():
        from triton.runtime.interpreter import InterpretedFunction
        return InterpretedFunction(fn)
    return triton.jit(fn)


@jit
def as_f32(u):
    """Small non-negative ints to fp32 without the slow int->float unit: put them in the
    mantissa of 2**23 and subtract it (OR + FADD at full rate instead of I2F)."""
    return (u | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@jit
def dequant(u, s, lut_ptr, z_ptrs, mask, CODEBOOK: tl.constexpr, ZMODE: tl.constexpr,
            SYM_ZERO: tl.constexpr):
    """fp32 weights from codes ``u`` and their scales ``s`` (same shape): the codebook level
    times ``s``; or ``(u - zero) * s`` with the zero ``SYM_ZERO`` (ZMODE 0) or the integer
    zero points at ``z_ptrs`` (ZMODE 1); or ``u * s + min`` with the float group minimums
    at ``z_ptrs`` (ZMODE 2). ``mask`` guards the zero-point loads."""
    if CODEBOOK:
        v = tl.load(lut_ptr + u) * s
    elif ZMODE == 0:
        v = (as_f32(u) - SYM_ZERO) * s
    elif ZMODE == 1:
        v = (as_f32(u) - tl.load(z_ptrs, mask=mask, other=0).to(tl.float32)) * s
    else:
        v = as_f32(u) * s + tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
    return v


@jit
def store_split(vals, out_ptrs, acc_ptrs, mask, cnt_ptr, tile, n_splits, REDUCE: tl.constexpr):
    """Write a program's fp32 result. REDUCE 0: the only split, a plain store. 1: atomic add
    into a zeroed fp32 ``out``. 2: atomic add into the fp32 workspace ``acc``; the split that
    arrives last at this tile (a counter per tile) writes the total to ``out`` in its dtype and
    leaves the workspace and counter zeroed for the next call, so no memset or cast kernels run
    around the launch. The workspace is read through L2 (``.cg``), where the atomics landed."""
    if REDUCE == 0:
        tl.store(out_ptrs, vals.to(out_ptrs.dtype.element_ty), mask=mask)
    elif REDUCE == 1:
        tl.atomic_add(out_ptrs, vals, mask=mask)
    else:
        tl.atomic_add(acc_ptrs, vals, mask=mask)
        tl.debug_barrier()  # every thread's partial is in before the counter moves
        arrived = tl.atomic_add(cnt_ptr + tile, 1)  # acq_rel at GPU scope
        if arrived == n_splits - 1:
            total = tl.load(acc_ptrs, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(out_ptrs, total.to(out_ptrs.dtype.element_ty), mask=mask)
            tl.store(acc_ptrs, tl.zeros_like(total), mask=mask)
            tl.atomic_xchg(cnt_ptr + tile, 0)

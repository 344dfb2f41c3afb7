"""CPU kernels in C++ with AVX2 or AVX-512 intrinsics (csrc/cpu_qgemm.cpp), one class per ISA.

Small batches (decode) run the fused kernel: codes are unpacked in registers and
multiplied straight into the activations, so only packed bytes cross the memory bus.
Large batches (prefill) dequantize the weight once per call into float32 and use
PyTorch's GEMM, which is compute-bound there and beats any unpack-in-the-loop kernel.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading

import torch

from .. import cpu_features
from .base import Kernel, LayerSpec
from .cpu_build import BuildError, load_library
from .cpu_repack import group_size_reason, kernel_columns, release_freed_memory, repack
from .reference import quantize_activations_int8

# Batch rows from which dequantize + GEMM wins over the fused kernel (measured with
# benchmarks/cpu_speed.py's GEMM rows on 2 threads); $QUANTLLM_CPU_GEMM_ROWS overrides.
GEMM_ROWS = int(os.environ.get("QUANTLLM_CPU_GEMM_ROWS", "16"))
COMPUTE_DTYPES = ("fp32", "bf16", "fp16", "int8")


SCRATCH_FLOATS = 1 << 20  # 4 MiB of float32 weight rows per GEMM slab
_local = threading.local()


def _ptr(t: torch.Tensor | None, offset_bytes: int = 0):
    return None if t is None else ctypes.c_void_p(t.data_ptr() + offset_bytes)


def _scratch(numel: int) -> torch.Tensor:
    """A per-thread float32 buffer reused across calls and layers."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < numel:
        buf = _local.buf = torch.empty(numel)
    return buf


@functools.lru_cache(maxsize=None)
def _library_or_reason(variant: str):
    try:
        return load_library(variant), ""
    except (BuildError, OSError, AttributeError) as exc:
        return None, f"C++ kernels unavailable ({type(exc).__name__}: {exc})"


class _CpuSimdKernel(Kernel):
    name = "cpu_simd"
    isa = "avx2"  # minimum cpu_features level

    @classmethod
    def variant(cls) -> str:
        return cls.isa

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str]:
        if spec.device_type != "cpu":
            return False, f"runs on CPU only, not {spec.device_type}"
        level = cpu_features.isa_level()
        if not cpu_features.at_least(cls.isa, level):
            return False, f"needs {cls.isa.upper()} but this CPU's level is {level}"
        if spec.bits not in (2, 3, 4, 8):
            return False, f"{spec.bits}-bit codes have no kernel layout"
        reason = group_size_reason(spec.group_size)
        if reason:
            return False, reason
        if spec.compute_dtype not in COMPUTE_DTYPES:
            return False, f"compute_dtype {spec.compute_dtype} not supported ({', '.join(COMPUTE_DTYPES)})"
        if spec.compute_dtype == "int8" and spec.weight_dtype in ("nf4", "fp4_e2m1"):
            return False, f"{spec.weight_dtype} levels are not integers: int8 compute needs an int format"
        lib, why = _library_or_reason(cls.variant())
        if lib is None:
            return False, why
        return True, f"fused {cls.variant()} unpack-and-FMA kernel (dequantize + GEMM from {GEMM_ROWS} rows)"

    def __init__(self, packed, spec: LayerSpec):
        super().__init__(packed, spec)
        self.w = repack(packed)
        release_freed_memory()  # repack's temporaries are gone now: return their pages
        self.lib = load_library(self.variant())
        self.int8 = spec.compute_dtype == "int8"
        self.bf16_gemm = spec.compute_dtype == "bf16" and cpu_features.native_bf16()

    def _activations(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        x2 = x.reshape(-1, w.in_features)
        if not (self.bf16_gemm and x2.shape[0] >= GEMM_ROWS):  # only the bf16 GEMM keeps bf16 rows
            x2 = x2.float()
        if w.perm is not None:
            x2 = x2[:, w.perm]
        if w.padded_in != w.in_features:
            x2 = torch.nn.functional.pad(x2, (0, w.padded_in - w.in_features))
        return kernel_columns(x2, w.layout).contiguous()

    def dequantize(self, n0: int = 0, n1: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``[n0, n1)`` of the weight, ``[rows, Kp]`` in the kernel's column order: float32,
        or bf16 when ``out`` is a bf16 tensor."""
        w = self.w
        n1 = w.out_features if n1 is None else n1
        out = torch.empty(n1 - n0, w.padded_in) if out is None else out
        fn = self.lib.qdequant_bf16 if out.dtype == torch.bfloat16 else self.lib.qdequant
        row_bytes = w.qweight.shape[1] * w.qweight.element_size()
        fn(_ptr(w.qweight, n0 * row_bytes), w.layout, n1 - n0, w.padded_in, w.n_groups,
           w.blocks_per_group, _ptr(w.scales, n0 * w.n_groups * 4),
           _ptr(w.offs, n0 * w.n_groups * 4), _ptr(w.lut), _ptr(out), torch.get_num_threads())
        return out

    def _gemm(self, xa: torch.Tensor) -> torch.Tensor:
        """Large batches: dequantize a slab of rows at a time into a reused scratch buffer (no
        full float copy, no fresh pages per call) and let PyTorch's GEMM do the math: in bf16
        when that is the compute dtype and the CPU has bf16 units (about twice fp32's rate)."""
        w = self.w
        rows = max(16, SCRATCH_FLOATS // w.padded_in)
        scratch = _scratch(rows * w.padded_in)
        dtype = torch.bfloat16 if self.bf16_gemm else torch.float32
        if self.bf16_gemm:  # the same bytes hold twice the bf16 elements
            scratch = scratch.view(torch.bfloat16)
        yt = torch.empty(w.out_features, xa.shape[0], dtype=dtype)
        xt = xa.t().to(dtype)
        for n0 in range(0, w.out_features, rows):
            n1 = min(n0 + rows, w.out_features)
            slab = self.dequantize(n0, n1, scratch[: (n1 - n0) * w.padded_in].view(n1 - n0, w.padded_in))
            torch.mm(slab, xt, out=yt[n0:n1])
        return yt.t()  # bf16 stays bf16: the layer casts to the activations' dtype anyway

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        xa = self._activations(x)
        m = xa.shape[0]
        threads = torch.get_num_threads()
        if self.int8:
            q, s = quantize_activations_int8(xa)
            s = s.reshape(-1).contiguous()
            y = torch.empty(m, w.out_features)
            self.lib.qgemm_i8(_ptr(q), _ptr(s), m, _ptr(w.qweight), w.layout, w.out_features, w.padded_in,
                              w.n_groups, w.blocks_per_group, _ptr(w.scales), _ptr(w.offs), _ptr(y), threads)
        elif m >= GEMM_ROWS:
            y = self._gemm(xa)
        else:
            y = torch.empty(m, w.out_features)
            self.lib.qgemm_f32(_ptr(xa), m, _ptr(w.qweight), w.layout, w.out_features, w.padded_in,
                               w.n_groups, w.blocks_per_group, _ptr(w.scales), _ptr(w.offs), _ptr(w.lut),
                               _ptr(y), threads)
        return y.reshape(*x.shape[:-1], w.out_features)


class CpuAvx2Kernel(_CpuSimdKernel):
    name = "cpu_avx2"
    isa = "avx2"


class CpuAvx512Kernel(_CpuSimdKernel):
    name = "cpu_avx512"
    isa = "avx512"

    @classmethod
    def variant(cls) -> str:
        # VNNI only speeds the int8-compute dot products; same layout either way.
        return "avx512_vnni" if cpu_features.at_least("avx512_vnni") else "avx512"

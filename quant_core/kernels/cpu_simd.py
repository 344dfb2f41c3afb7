"""CPU kernels in C++ with AVX2 or AVX-512 intrinsics (csrc/qgemv.cpp, csrc/qdequant.cpp), one class per ISA.

Small batches (decode) run the fused kernel: codes are unpacked in registers and
multiplied straight into the activations, so only packed bytes cross the memory bus.
Large batches (prefill) run a blocked GEMM (csrc/qgemm.cpp) that dequantizes a panel of
weight rows at a time into an L1-sized buffer and reuses it for every activation row: in fp32,
or in bf16 on CPUs with bf16 units.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import os

import torch

from .. import cpu_features
from .base import Kernel, LayerSpec
from .cpu_build import BuildError, load_library
from .cpu_repack import KIND_BYTES, group_size_reason, release_freed_memory, repack, stack_rows

# Batch rows from which the blocked GEMM wins over the fused small-batch kernel, per path of the
# latter (one thread, 1.1B gate/down shapes, AVX-512 and AVX2 alike): int16 activations (two products
# per instruction) still beat the fp32 GEMM at 32 rows and tie the bf16 one at 24-32; the float FMA
# path ties the fp32 GEMM at 24 and loses to the bf16 one from 16. Codebook levels as int16 (AVX2,
# 2 rows per pass): 3.6 ms against the GEMM's 4.0 at 8 rows, 7.1 against 5.3 at 16 (nf4 2048x5632).
# $QUANTLLM_CPU_GEMM_ROWS overrides.
GEMM_ROWS_ENV = os.environ.get("QUANTLLM_CPU_GEMM_ROWS")


def gemm_rows(path: str, bf16_gemm: bool, codebook: bool = False) -> int:
    if GEMM_ROWS_ENV:
        return int(GEMM_ROWS_ENV)
    if path == "int16":
        return 16 if codebook else 32
    return 16 if bf16_gemm else 24


COMPUTE_DTYPES = ("fp32", "bf16", "fp16", "int8")


# How the fused kernel multiplies (csrc/qstep.cpp numbers them in this order): "fma" float32
# activations times codes converted to float; "int8" activations quantized per row (compute_dtype
# int8); "int16" activations quantized per 32-column block to int16 (float compute of every format:
# int formats ~1.5x the FMA path, codebook formats ~1.6x with their levels as int16, csrc/qgemv16_lut.cpp;
# outputs within the FMA path's tolerance). $QUANTLLM_CPU_FP32_PATH=fma picks the FMA path instead.
# Codebook formats take int16 where the ISA class says so (codebook_path): AVX-512 looks 16 levels up in
# one permute, and its FMA path measured faster there (nf4 2048x5632, one thread: 0.48 against 0.51 ms).
PATHS = ("fma", "int8", "int16")
FP32_PATH = os.environ.get("QUANTLLM_CPU_FP32_PATH", "int16")
if FP32_PATH not in ("fma", "int16"):
    raise ValueError(f"QUANTLLM_CPU_FP32_PATH={FP32_PATH!r}: choose fma or int16")


# How prompt rows (the lean step's prefill, ``_CpuSimdKernel.prompt``) of int formats with float compute
# multiply. "same" (default): as any batch. "auto": on AVX-512 VNNI builds, activations quantized to int8 per 32-column block
# (as llama.cpp's q8 blocks) on a blocked int8 GEMM (csrc/qgemm8.cpp), elsewhere as any batch; "q8": int8
# blocks on every build (elsewhere the fused csrc/qgemv8.cpp: 1.2-1.4x the int16 path at 15 rows on AVX2
# too, but there SmolLM2's greedy text left the reference kernel's within 16 tokens). Relative error ~5e-3
# against ~2e-5; perplexity cost +0.09 % (cpu_speed.md), but with it SmolLM2 int4's forced tool call in
# the LangChain standard test no longer closed within its budget, so it is opt-in. Decode steps never take it.
PROMPT_PATH = os.environ.get("QUANTLLM_CPU_PROMPT_PATH", "same")
if PROMPT_PATH not in ("auto", "q8", "same"):
    raise ValueError(f"QUANTLLM_CPU_PROMPT_PATH={PROMPT_PATH!r}: choose auto, q8 or same")
# On AVX-512 VNNI builds prompt rows take a blocked int8 GEMM instead (csrc/qgemm8.cpp: 1.1-1.2x the
# fused q8 kernel at 15 rows, 1.1-2.1x oneDNN's bf16 GEMM on the 1.1B shapes at 128-512 rows, one
# thread), its activation blocks up to Q8_GEMM_BLOCK columns (the largest multiple of 32 dividing the
# weight group). 32 by default, as the fused kernel: 128 ran 1.15-1.4x faster but cost SmolLM2 int4
# +0.62 % perplexity against 32's +0.24 % (benchmarks/prompt_path_ppl.py), and changed its greedy text.
Q8_GEMM_BLOCK = int(os.environ.get("QUANTLLM_CPU_Q8_BLOCK", "32"))


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


@functools.lru_cache(maxsize=None)
def _library_or_reason(variant: str):
    try:
        return load_library(variant), ""
    except (BuildError, OSError, AttributeError) as exc:
        return None, f"C++ kernels unavailable ({type(exc).__name__}: {exc})"


class _CpuSimdKernel(Kernel):
    name = "cpu_simd"
    isa = "avx2"  # minimum cpu_features level
    codebook_path = "int16"  # float compute of codebook formats (see PATHS)

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
        return True, f"fused {cls.variant()} unpack-and-FMA kernel (blocked dequantizing GEMM for batches)"

    def __init__(self, packed, spec: LayerSpec):
        super().__init__(packed, spec)
        self.lib = load_library(self.variant())
        self.w = repack(packed, self.lib.qtile_rows())
        release_freed_memory()  # repack's temporaries are gone now: return their pages
        self.int8 = spec.compute_dtype == "int8"
        codebook = self.w.lut is not None
        if self.int8:
            self.path = "int8"
        else:
            self.path = self.codebook_path if codebook and FP32_PATH == "int16" else FP32_PATH
        self.bf16_gemm = spec.compute_dtype == "bf16" and cpu_features.native_bf16()
        self.gemm_rows = gemm_rows(self.path, self.bf16_gemm, codebook)  # batches of this many rows take the GEMM
        vnni = self.variant() == "avx512_vnni"
        self.prompt_q8 = (self.path == "int16" and not codebook  # int codes only
                          and (PROMPT_PATH == "q8" or (PROMPT_PATH == "auto" and vnni)))
        self.q8_gemm = self.prompt_q8 and vnni  # prompts on the blocked int8 GEMM

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the kernels read it: [M, Kp] float32 (bf16 for the bf16 GEMM), columns in
        the weight's order, zero-padded, contiguous."""
        w = self.w
        x2 = x.reshape(-1, w.in_features)
        if not (self.bf16_gemm and x2.shape[0] >= self.gemm_rows):  # only the bf16 GEMM keeps bf16 rows
            x2 = x2.float()
        if w.perm is not None:
            x2 = x2[:, w.perm]
        if w.padded_in != w.in_features:
            x2 = torch.nn.functional.pad(x2, (0, w.padded_in - w.in_features))
        return x2.contiguous()

    def dequantize_tiles(self, t0: int, t1: int, out: torch.Tensor) -> torch.Tensor:
        """Rows of tiles ``[t0, t1)`` as a column-major slab: ``out`` is [Kp, ld] (float32 or
        bf16, ld >= rows of the tiles) and column j is weight row ``t0 * rows_per_tile + j``."""
        fn = self.lib.qdequant_t_bf16 if out.dtype == torch.bfloat16 else self.lib.qdequant_t
        fn(*self.w.layer_args(), _ptr(self.w.lut), t0, t1, _ptr(out), out.stride(0), torch.get_num_threads())
        return out

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole weight, [N, Kp] in the kernel's column order (a transposed view)."""
        w = self.w
        tiles = -(-w.out_features // w.rows_per_tile)
        slab = torch.empty(w.padded_in, tiles * w.rows_per_tile, dtype=dtype)
        return self.dequantize_tiles(0, tiles, slab).t()[: w.out_features]

    def gemm(self, xa: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None = None,
             accumulate: bool = False) -> torch.Tensor:
        """Large batches (csrc/qgemm.cpp): as ``gemv``, but each panel of weight rows is dequantized
        once into a cache-sized buffer and applied to every row of ``xa`` from registers. ``xa``
        bf16 (the bf16 GEMM, ``bf16_gemm``) runs on bf16 units; float32 in fp32. ``out`` may be
        bf16 there (not with ``accumulate``): written once, rounded to nearest even."""
        w = self.w
        if self.bf16_gemm and xa.dtype != torch.bfloat16:  # a bf16 model's layers: bf16 rows on bf16 units
            xa = xa.to(torch.bfloat16)
        layer = (_ptr(xa), xa.shape[0], xa.stride(0), *w.layer_args(), _ptr(w.lut), _ptr(bias), _ptr(out),
                 out.stride(0), accumulate)
        if xa.dtype == torch.bfloat16:
            if out.dtype == torch.bfloat16 and accumulate:
                raise ValueError("accumulate needs a float32 out")
            self.lib.qgemm_bf16(*layer, out.dtype == torch.bfloat16, torch.get_num_threads())
        else:
            self.lib.qgemm_f32(*layer, torch.get_num_threads())
        return out

    def gemv(self, xa: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None = None,
             accumulate: bool = False) -> torch.Tensor:
        """Fused kernel on prepared activations ``xa`` [M, Kp] float32 (contiguous) into ``out``
        [M, N] float32 (rows may be strided, columns contiguous): ``out = xa @ W^T (+ bias)``, or
        ``out += ...`` with ``accumulate``. ``bias``: float32 padded to whole tiles (``padded_bias``)."""
        w = self.w
        threads = torch.get_num_threads()
        if self.path == "int8":
            self.lib.qgemv_i8(_ptr(xa), xa.shape[0], *w.layer_args(), _ptr(bias), _ptr(out), out.stride(0),
                              accumulate, threads)
        else:
            fn = self.lib.qgemv_i16 if self.path == "int16" else self.lib.qgemv_f32
            fn(_ptr(xa), xa.shape[0], *w.layer_args(), _ptr(w.lut), _ptr(bias), _ptr(out), out.stride(0),
               accumulate, threads)
        return out

    def prompt(self, xa: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None = None,
               accumulate: bool = False, lengths: list[int] | None = None) -> torch.Tensor:
        """As ``gemv`` / ``gemm`` for the rows of prompts: int8 activations per block (``prompt_q8``)
        at any row count, on the blocked int8 GEMM where the build has VNNI (``q8_gemm``: bf16 rows and
        ``out`` taken as they are), else on the fused q8 kernel, except where a bf16 model's long prompt
        takes the bf16 GEMM; without ``prompt_q8`` as any batch of the prompt's length. ``lengths``: the
        real tokens of each prompt when ``xa`` holds several, left-padded to equal widths (None: one
        prompt of all rows). Each prompt's rows take the kernel that prompt takes alone, and every
        kernel's row depends on that row alone, so a prompt gets the same bits in a batch as alone
        (with the batch's row count a padded short prompt went to the GEMM, alone to the GEMV)."""
        m = xa.shape[0]
        lengths = [m] if lengths is None else list(lengths)
        routes: dict[str, list[int]] = {}
        for index, length in enumerate(lengths):
            routes.setdefault(self.prompt_route(length), []).append(index)
        if len(routes) == 1:
            return self._prompt_on(next(iter(routes)), xa, out, bias, accumulate)
        width = m // len(lengths)
        for route, prompts in routes.items():  # mixed lengths: each route's prompts' rows gathered
            rows = (torch.tensor(prompts)[:, None] * width + torch.arange(width)).reshape(-1)
            part = out.index_select(0, rows) if accumulate else torch.empty(len(rows), out.shape[1], dtype=out.dtype)
            out.index_copy_(0, rows, self._prompt_on(route, xa.index_select(0, rows), part, bias, accumulate))
        return out

    def prompt_route(self, length: int) -> str:
        """Which kernel a prompt of ``length`` tokens takes: "q8_gemm", "gemm", "q8" or "gemv"."""
        if self.q8_gemm:
            return "q8_gemm"
        if self.bf16_gemm and length >= self.gemm_rows:
            return "gemm"
        if self.prompt_q8:
            return "q8"
        return "gemv" if length < self.gemm_rows or self.int8 else "gemm"

    def _prompt_on(self, route: str, xa, out, bias, accumulate) -> torch.Tensor:
        w, m = self.w, xa.shape[0]
        if route == "q8_gemm":
            self.lib.qgemm_q8(_ptr(xa), m, xa.stride(0), *w.layer_args(), _ptr(bias), _ptr(out), out.stride(0),
                              accumulate, xa.dtype == torch.bfloat16, out.dtype == torch.bfloat16,
                              self.prompt_block(), torch.get_num_threads())
            return out
        if route == "gemm":
            return self.gemm(xa, out, bias, accumulate)
        if out.dtype != torch.float32:  # the small-batch kernels write float32
            return out.copy_(self._prompt_on(route, xa, torch.empty(out.shape), bias, accumulate))
        xa = xa.float()  # a long batch's bf16 rows (activations) routed here by a short prompt
        if route == "q8":
            self.lib.qgemv_q8(_ptr(xa), m, *w.layer_args(), _ptr(bias), _ptr(out), out.stride(0), accumulate,
                              torch.get_num_threads())
            return out
        return self.gemv(xa, out, bias, accumulate)

    def prompt_block(self) -> int:
        """Columns per activation scale on the prompt path: 32 (fused q8 kernel), or on the int8 GEMM the
        largest multiple of 32 up to Q8_GEMM_BLOCK that divides the weight group."""
        if not self.q8_gemm:
            return 32
        group = self.w.words_per_group * (4 if self.w.kind == KIND_BYTES else 8)  # columns per weight group
        return next(b for b in range(Q8_GEMM_BLOCK // 32 * 32, 0, -32) if b == 32 or group % b == 0)

    def padded_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """``bias`` [N] as ``gemv`` reads it: float32, zero-padded to whole tiles."""
        return torch.nn.functional.pad(bias.float(), (0, self.w.tiles * self.w.rows_per_tile - self.w.out_features))

    @classmethod
    def stacked(cls, kernels: list["_CpuSimdKernel"]) -> "_CpuSimdKernel":
        """One kernel over the rows of ``kernels`` in order (fused projections); same class and
        compute dtype required. The code bytes are shared, not copied."""
        first = kernels[0]
        if any(type(k) is not type(first) or k.spec.compute_dtype != first.spec.compute_dtype for k in kernels):
            raise ValueError("stacked kernels must be of one class and compute dtype")
        fused = object.__new__(type(first))
        fused.__dict__.update(first.__dict__)
        fused.w = stack_rows([k.w for k in kernels])
        fused.spec = dataclasses.replace(first.spec, out_features=fused.w.out_features)
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        xa = self.activations(x)
        m = xa.shape[0]
        if m >= self.gemm_rows and not self.int8:  # a bf16 model's batch gets bf16 straight from the GEMM
            y = self.gemm(xa, torch.empty(m, w.out_features, dtype=xa.dtype))
        else:
            y = self.gemv(xa, torch.empty(m, w.out_features))
        return y.reshape(*x.shape[:-1], w.out_features)


class CpuAvx2Kernel(_CpuSimdKernel):
    name = "cpu_avx2"
    isa = "avx2"


class CpuAvx512Kernel(_CpuSimdKernel):
    name = "cpu_avx512"
    isa = "avx512"
    codebook_path = "fma"

    @classmethod
    def variant(cls) -> str:
        # VNNI only speeds the int8-compute dot products; same layout either way.
        return "avx512_vnni" if cpu_features.at_least("avx512_vnni") else "avx512"

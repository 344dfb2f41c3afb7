"""Build (once, cached) and load the CUDA quantized-GEMM library, one shared library per variant.

A variant fixes what the kernels specialise on at compile time: activation dtype (fp16/bf16),
weight format (int4 / 4-bit codebook / int8) and zero mode. The source (``csrc/cuda_*.cu*``)
includes no torch headers, so ``nvcc`` alone builds it (30-50 s a variant on the H200 machine, with a
progress line: a model's first use on a GPU waits for its variants);
it is loaded with ctypes and launched on PyTorch's current stream, which also puts it in CUDA
graphs being captured. The CPU kernels are built the same way (``cpu_build.py``).

Cache: ``$QUANTLLM_CACHE/kernels`` (or ``~/.cache/quantllm/kernels``), keyed by the sources, flags,
target architecture and nvcc version. ``$QUANTLLM_NVCC`` names the compiler if it is not in
``$CUDA_HOME/bin``, ``/usr/local/cuda/bin`` or on the PATH.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..cache import cache_root
from ..errors import BuildError

CSRC = Path(__file__).parent / "csrc"
SOURCE = CSRC / "cuda_qmm.cu"
NVCC_ENV = "QUANTLLM_NVCC"
# Programmatic dependent launch on sm_90 (each fused kernel's first weight loads overlap the previous
# kernel's tail; csrc/cuda_ptx.cuh pdl_wait): on unless this is "0". Measured on the H200 (gpu_speed.md,
# session 8): graph chains equal eager ones for every kernel and config; back-to-back calls 2-2.5 us faster.
PDL_ENV = "QUANTLLM_CUDA_PDL"
BASE_FLAGS = ["-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-lineinfo"]
FORMATS = {"int4": 0, "cb4": 1, "int8": 2}
ZERO_MODES = {"none": 0, "int": 1, "min": 2}


class QmmArgs(ctypes.Structure):
    """``qmm::Args`` of ``csrc/cuda_qmm.cuh``, field for field."""
    _fields_ = [("x", ctypes.c_void_p), ("qw", ctypes.c_void_p), ("scales", ctypes.c_void_p),
                ("zeros", ctypes.c_void_p), ("out", ctypes.c_void_p), ("ws", ctypes.c_void_p),
                ("counters", ctypes.c_void_p), ("M", ctypes.c_int), ("N", ctypes.c_int), ("K", ctypes.c_int),
                ("group", ctypes.c_int), ("group_shift", ctypes.c_int), ("k_split", ctypes.c_int),
                ("splits", ctypes.c_int), ("lut", ctypes.c_uint32 * 8)]


def nvcc() -> str:
    candidates = [os.environ.get(NVCC_ENV), os.environ.get("CUDA_HOME") and os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"),
                  "/usr/local/cuda/bin/nvcc", shutil.which("nvcc")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise BuildError("nvcc (the CUDA compiler) was not found: install the CUDA toolkit, or set "
                     f"${NVCC_ENV} to its nvcc, or run layers with kernel='triton'")


@functools.lru_cache(maxsize=None)
def _nvcc_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except Exception as exc:
        raise BuildError(f"nvcc at {path!r} does not run: {exc}") from exc
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


def pdl_from_env() -> int:
    """1 (PDL on, the default) unless $QUANTLLM_CUDA_PDL is "0"."""
    return int(os.environ.get(PDL_ENV, "1").strip() != "0")


def variant_defines(bf16: bool, fmt: str, zero_mode: str) -> list[str]:
    if fmt not in FORMATS or zero_mode not in ZERO_MODES:
        raise BuildError(f"no CUDA kernel variant for format {fmt!r} with zero mode {zero_mode!r}")
    return [f"-DQMM_BF16={int(bf16)}", f"-DQMM_FMT={FORMATS[fmt]}", f"-DQMM_ZM={ZERO_MODES[zero_mode]}"]


def arch_flags(arch: str) -> list[str]:
    """``arch`` like "90" or "80": real machine code for it; from sm_90 the few-row kernel may meet
    along K in thread-block clusters, and sm_90 itself gets the wgmma kernel (target sm_90a)."""
    if arch == "90":  # wgmma needs the arch-specific target (runs on sm_90 parts only: H100, H200)
        return ["-gencode=arch=compute_90a,code=sm_90a", "-DQMM_CLUSTERS=1", "-DQMM_WGMMA=1"]
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}", f"-DQMM_CLUSTERS={int(int(arch) >= 90)}"]


def compile_command(out: str, bf16: bool, fmt: str, zero_mode: str, arch: str, extra=()) -> list[str]:
    return [nvcc(), *BASE_FLAGS, *arch_flags(arch), *variant_defines(bf16, fmt, zero_mode), *extra, str(SOURCE),
            "-o", out]


def _source_hash() -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(CSRC.glob("cuda_*")))).hexdigest()[:16]


def library_path(bf16: bool, fmt: str, zero_mode: str, arch: str, extra: tuple[str, ...] = ()) -> Path:
    flags = " ".join(BASE_FLAGS + arch_flags(arch) + variant_defines(bf16, fmt, zero_mode) + list(extra))
    key = hashlib.sha256((_source_hash() + flags + _nvcc_version(nvcc())).encode()).hexdigest()[:16]
    dtype = "bf16" if bf16 else "fp16"
    return cache_root() / "kernels" / f"cuda_qmm_{dtype}_{fmt}_{zero_mode}_sm{arch}_{key}.so"


def build(bf16: bool, fmt: str, zero_mode: str, arch: str, extra: tuple[str, ...] = ()) -> Path:
    """Compile the variant into the cache unless it is there; returns the library's path. ``extra``:
    more nvcc flags (the benchmarks' measurement knobs: gpu_gemv_cost.py, gpu_wgmma_pipeline.py --builds)."""
    out = library_path(bf16, fmt, zero_mode, arch, extra)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = compile_command(tmp, bf16, fmt, zero_mode, arch, extra)
    desc = f"Compiling the CUDA kernels ({'bf16' if bf16 else 'fp16'} {fmt} {zero_mode}, sm_{arch}; once, cached)"
    try:
        returncode, stderr = _run_with_clock(cmd, desc, timeout=900)
        if returncode != 0:
            raise BuildError(f"building the CUDA kernels failed:\n{' '.join(cmd)}\n{stderr[-3000:]}")
    except BaseException:
        os.unlink(tmp)  # nothing half-written stays in the cache
        raise
    os.replace(tmp, out)  # atomic: a concurrent loader never sees half a file
    return out


def _run_with_clock(cmd: list[str], desc: str, timeout: float) -> tuple[int, str]:
    """``cmd``'s exit code and stderr, with a line whose clock ticks while nvcc runs (one opaque process)."""
    with tqdm(total=1, desc=desc, bar_format="{desc}: {elapsed}") as clock:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    _, stderr = proc.communicate(timeout=1)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        raise BuildError(f"building the CUDA kernels took over {timeout:.0f} s: {' '.join(cmd)}")
                    clock.refresh()
        finally:
            if proc.poll() is None:  # past the limit or interrupted: no nvcc left writing into the cache
                proc.kill()
                proc.communicate()
        clock.update(1)
    return proc.returncode, stderr


@functools.lru_cache(maxsize=None)
def load_library(bf16: bool, fmt: str, zero_mode: str, arch: str, extra: tuple[str, ...] = ()) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build(bf16, fmt, zero_mode, arch, extra)))
    p = ctypes.c_void_p
    lib.qmm_run.argtypes = [ctypes.POINTER(QmmArgs), ctypes.c_int, p]
    lib.qmm_run.restype = ctypes.c_int
    lib.qmm_gemv.argtypes = [ctypes.POINTER(QmmArgs), ctypes.c_int, ctypes.c_int, p]
    lib.qmm_gemv.restype = ctypes.c_int
    lib.qmm_wgmma.argtypes = [ctypes.POINTER(QmmArgs), ctypes.c_int, ctypes.c_int, p]
    lib.qmm_wgmma.restype = ctypes.c_int
    lib.qmm_dequant.argtypes = [ctypes.POINTER(QmmArgs), p, p]
    lib.qmm_dequant.restype = ctypes.c_int
    lib.qmm_preload.argtypes = []
    lib.qmm_preload.restype = ctypes.c_int
    lib.qmm_set_device.argtypes = [ctypes.c_int]
    lib.qmm_set_device.restype = ctypes.c_int
    lib.qmm_set_pdl.argtypes = [ctypes.c_int]
    lib.qmm_set_pdl.restype = ctypes.c_int
    lib.qmm_set_pdl(pdl_from_env())
    lib.qmm_error_string.argtypes = [ctypes.c_int]
    lib.qmm_error_string.restype = ctypes.c_char_p
    want = int(bf16) * 100 + FORMATS[fmt] * 10 + ZERO_MODES[zero_mode]
    if lib.qmm_variant() != want:
        raise BuildError(f"CUDA kernel library reports variant {lib.qmm_variant()}, expected {want}; "
                         f"delete {cache_root() / 'kernels'} and retry")
    return lib


_PRELOADED: set[tuple[int, int]] = set()


def preload(lib: ctypes.CDLL, device: int) -> None:
    """Load every kernel of ``lib`` on ``device`` now, once: under CUDA's lazy loading a kernel first
    launched inside a CUDA-graph capture is loaded mid-capture, which invalidates the capture. Call it
    outside any capture (a layer's construction does)."""
    if (id(lib), device) in _PRELOADED:
        return
    lib.qmm_set_device(device)  # the library's own runtime keeps its own current device
    err = lib.qmm_preload()
    if err:
        raise BuildError(f"loading the CUDA kernels on device {device} failed: {lib.qmm_error_string(err).decode()}")
    _PRELOADED.add((id(lib), device))

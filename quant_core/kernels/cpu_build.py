"""Build (once, cached) and load the C++ CPU kernels, one shared library per ISA variant.

The source includes no torch headers, so a variant compiles in 20-35 s on 2 cores (its sources side by side) with
the system's g++; it is loaded with ctypes (which releases the GIL during calls). The
OpenMP runtime it links is libgomp.so.1, the same soname PyTorch's wheel loads, so both
share one thread pool instead of fighting over the cores.

Cache: ``$QUANTLLM_CACHE`` or ``~/.cache/quantllm``, keyed by source hash, flags and compiler.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from ..cache import cache_root
from ..errors import BuildError

CSRC = Path(__file__).parent / "csrc"
# linked into one library per variant; compiled side by side, the longest first (qgemv.cpp is about a third
# of a variant's compile time) so that the last to start are the short ones
SOURCES = ("qgemv.cpp", "qgemv8.cpp", "qgemv16.cpp", "qdequant.cpp", "qgemm.cpp", "qgemv16_lut.cpp",
           "qgemv16_rows.cpp", "qgemm8.cpp", "qdecode.cpp", "qattend.cpp", "qstep.cpp", "qgram.cpp")
HEADERS = ("simd.h", "layer.h", "tiles.h", "block16.h")
CXX_ENV = "CXX"
VARIANT_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
    "avx512_vnni": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                    "-mavx512vnni"],
}
# -ffp-contract=off: a * b + c stays two roundings, as in PyTorch's separate operations
BASE_FLAGS = ["-O3", "-shared", "-fPIC", "-std=c++17", "-fno-math-errno", "-ffp-contract=off"]
# QUANTLLM_CPU_SANITIZE=1 builds the kernels under AddressSanitizer and UBSan (scripts/test-sanitizers):
# any out-of-bounds read or undefined operation aborts the process instead of returning garbage. -O0: at -O1
# the instrumented templates took minutes to compile, -O0 about twice the optimized build.
SANITIZE_ENV = "QUANTLLM_CPU_SANITIZE"
SANITIZE_FLAGS = ["-O0", "-g1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def sanitized() -> bool:
    return os.environ.get(SANITIZE_ENV, "0") not in ("", "0")


def base_flags() -> list[str]:
    if sanitized():
        return [f for f in BASE_FLAGS if f != "-O3"] + SANITIZE_FLAGS
    return BASE_FLAGS




def cache_dir() -> Path:
    return cache_root() / "kernels"


def compiler() -> str:
    cxx = os.environ.get(CXX_ENV) or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise BuildError("no C++ compiler found (install g++, e.g. `apt-get install g++`, or set $CXX)")
    return cxx


def _compiler_id(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    except Exception as exc:
        raise BuildError(f"C++ compiler {cxx!r} does not run: {exc}") from exc


def library_path(variant: str) -> Path:
    cxx = compiler()
    text = b"".join((CSRC / name).read_bytes() for name in SOURCES + HEADERS)
    key = hashlib.sha256(text + " ".join(VARIANT_FLAGS[variant] + base_flags()).encode()
                         + _compiler_id(cxx).encode()).hexdigest()[:16]
    return cache_dir() / f"cpu_qgemm_{variant}_{key}.so"


def build(variant: str) -> Path:
    """Compile ``variant`` into the cache unless it is there; returns the library's path."""
    if variant not in VARIANT_FLAGS:
        raise BuildError(f"unknown CPU kernel variant {variant!r}; known: {', '.join(VARIANT_FLAGS)}")
    out = library_path(variant)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    # Without OpenMP the kernels still run, on one thread: better than no kernel at all.
    for openmp in (["-fopenmp"], []):
        desc = f"Compiling the {variant} CPU kernels" + ("" if openmp else " without OpenMP") + " (once, cached)"
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            error = _compile([compiler(), *base_flags(), *VARIANT_FLAGS[variant], *openmp], tmp, desc)
            if error is None:
                os.replace(os.path.join(tmp, "lib.so"), out)  # atomic: a concurrent loader never sees half a file
                return out
        errors.append(error)
    raise BuildError("building the CPU kernels failed:\n" + "\n".join(errors))


def _compile(cmd: list[str], tmp: str, desc: str) -> str | None:
    """Each source to an object, a core each, then one link into ``tmp/lib.so``; the error text, or None.
    A progress bar counts the files done: the first use waits 20-80 s for this."""
    timeout = 1800 if sanitized() else 300

    def run(args: list[str]) -> str | None:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        return None if proc.returncode == 0 else f"{' '.join(args)}\n{proc.stderr[-2000:]}"

    objects = [os.path.join(tmp, name + ".o") for name in SOURCES]
    with tqdm(total=len(SOURCES) + 1, desc=desc, unit="file") as bar:
        with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
            jobs = [pool.submit(run, [*cmd, "-c", str(CSRC / n), "-o", o]) for n, o in zip(SOURCES, objects)]
            failed = []
            for job in as_completed(jobs):
                bar.update(1)
                if job.result():
                    failed.append(job.result())
        if failed:
            return failed[0]
        error = run([*cmd, *objects, "-o", os.path.join(tmp, "lib.so")])
        bar.update(1)
        return error


@functools.lru_cache(maxsize=None)
def load_library(variant: str) -> ctypes.CDLL:
    import torch  # noqa: F401  (load PyTorch's libgomp first so ours resolves to the same one)

    lib = ctypes.CDLL(str(build(variant)))
    p, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    # row segments, their cumulative row ends, segment count, kind, N, Kp, G, words per group, scales, offsets
    layer = [p, p, i, i, i, i, i, i, p, p]
    lib.qgemv_f32.argtypes = [p, i, *layer, p, p, p, i64, i, i]  # x, M, layer, lut, bias, y, ldy, accumulate, threads
    lib.qgemv_i8.argtypes = [p, i, *layer, p, p, i64, i, i]
    lib.qgemv_i16.argtypes = [p, i, *layer, p, p, p, i64, i, i]  # as qgemv_f32
    lib.qgemv_q8.argtypes = [p, i, *layer, p, p, i64, i, i]
    lib.qgemm_f32.argtypes = [p, i, i64, *layer, p, p, p, i64, i, i]  # x, M, ldx, layer, lut, bias, y, ldy, acc, thr
    lib.qgemm_bf16.argtypes = [*lib.qgemm_f32.argtypes[:-1], i, i]  # ..., accumulate, y_bf16, threads
    # x, M, ldx, layer, bias, y, ldy, accumulate, x_bf16, y_bf16, max_block, threads
    lib.qgemm_q8.argtypes = [p, i, i64, *layer, p, p, i64, i, i, i, i, i]
    lib.qgemm_q8.restype = ctypes.c_int
    lib.qdequant_t.argtypes = [*layer, p, i, i, p, i64, i]
    lib.qdequant_t_bf16.argtypes = [*layer, p, i, i, p, i64, i]
    lib.qgather.argtypes = [*layer, p, p, i, p]
    f = ctypes.c_float
    lib.qrms_norm.argtypes = [p, i, i, p, f, p]
    lib.qrope_cache.argtypes = [p, i, i, i, i, i, i, p, p, p, p, f, p, p, p, i, i]
    lib.qswiglu.argtypes = [p, i, i, p]
    lib.qattend.argtypes = [p, p, p, i, i, i, i, i, i, p, f, p, i]
    lib.qstep.argtypes = [p, p, i, p, p, p, i, p, p]  # plan, layers, count, x, cos, sin, slot, valid, seconds
    lib.qattend_prompt.argtypes = [p, p, p, i, i, i, i, i, i, p, f, p, i]
    lib.qprefill.argtypes = [p, p, i, p, p, p, i, p, p]  # plan, layers, count, x, cos, sin, T, valid, seconds
    lib.qgram_bf16.argtypes = [p, i64, p, i64, i, i, f, i, i]  # c, ldc, x, ldx, t, k, alpha, dpbf16, threads
    for fn in (lib.qgram_bf16, lib.qgemv_f32, lib.qgemv_i8, lib.qgemv_i16, lib.qgemv_q8, lib.qgemm_f32, lib.qgemm_bf16, lib.qdequant_t,
               lib.qdequant_t_bf16, lib.qgather, lib.qrms_norm, lib.qrope_cache, lib.qswiglu, lib.qattend, lib.qstep,
               lib.qattend_prompt, lib.qprefill):
        fn.restype = None
    lib.qtile_rows.restype = ctypes.c_int
    lib.qisa.restype = ctypes.c_char_p
    built = lib.qisa().decode()
    if built != variant:
        raise BuildError(f"library {variant} reports ISA {built}; delete {cache_dir()} and retry")
    return lib

"""What this CPU can do: ISA flags from /proc/cpuinfo and PyTorch's own verdict.

Kernels ask here instead of assuming; ``QUANTLLM_CPU_ISA`` lowers the level (e.g. to
``avx2`` on an AVX-512 machine) so the AVX2 path can be exercised anywhere.
"""
from __future__ import annotations

import functools
import os
import platform

import torch

ISA_ENV = "QUANTLLM_CPU_ISA"
# Levels in increasing order; each implies the ones before it.
ISA_LEVELS = ("none", "avx2", "avx512", "avx512_vnni", "amx")
_REQUIRED = {
    "avx2": ("avx2", "fma", "f16c"),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "avx512_vnni": ("avx512_vnni",),
    "amx": ("amx_tile", "amx_bf16", "amx_int8"),
}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The ``flags`` line of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """bf16 matrix units (AVX512-BF16 or AMX): there a bf16 GEMM runs about 2x an fp32 one;
    elsewhere bf16 is emulated and slower than fp32. Both need AVX-512, so a level lowered
    below it ($QUANTLLM_CPU_ISA=avx2) has none."""
    return at_least("avx512") and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def torch_capability() -> str:
    """PyTorch's dispatch level, e.g. "AVX2", "AVX512", "DEFAULT" (NO AVX)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception as exc:  # older torch: say so rather than guess
        return f"unknown ({type(exc).__name__})"


def detected_isa(flags: frozenset[str] | None = None) -> str:
    """Highest level in ISA_LEVELS whose flags (and all lower levels' flags) are present."""
    flags = cpu_flags() if flags is None else flags
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return "none"
    level = "none"
    for name in ISA_LEVELS[1:]:
        if not all(f in flags for f in _REQUIRED[name]):
            break
        level = name
    return level


def isa_level() -> str:
    """Detected level, lowered by $QUANTLLM_CPU_ISA if set (never raised above the hardware)."""
    hw = detected_isa()
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if not forced:
        return hw
    if forced not in ISA_LEVELS:
        raise ValueError(f"{ISA_ENV}={forced!r} is not an ISA level; choose one of {', '.join(ISA_LEVELS)}")
    if ISA_LEVELS.index(forced) > ISA_LEVELS.index(hw):
        raise ValueError(f"{ISA_ENV}={forced} asks for more than this CPU has ({hw}); "
                         f"it can only lower the level")
    return forced


def at_least(level: str, current: str | None = None) -> bool:
    current = isa_level() if current is None else current
    return ISA_LEVELS.index(current) >= ISA_LEVELS.index(level)


def summary() -> dict[str, object]:
    """For benchmarks and `quantllm info`: what was detected and from where."""
    flags = cpu_flags()
    interesting = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    return {"isa_level": isa_level(), "detected": detected_isa(), "torch_capability": torch_capability(),
            "flags": interesting, "machine": platform.machine(), "threads": torch.get_num_threads()}

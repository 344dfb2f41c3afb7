"""How many CPU threads a generation runs on (``n_threads``, as LangChain's ``LlamaCpp`` has it).

PyTorch's ops and our C++ kernels (which read ``torch.get_num_threads()`` at every call) share one
OpenMP pool, so one setting covers both. It is process-wide; ``torch_threads`` sets it around
each forward pass only and puts the caller's value back, so code that runs between our passes
keeps its own. The default is the physical cores this process may run on: a second hardware
thread of a core adds no memory bandwidth, which is what decoding is bound by.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

import torch

from .errors import ConfigError


def check_threads(n_threads) -> int | None:
    """``n_threads`` if it is None or a positive integer, else a ConfigError saying what to pass."""
    if n_threads is None or (isinstance(n_threads, int) and not isinstance(n_threads, bool) and n_threads > 0):
        return n_threads
    raise ConfigError(f"n_threads must be a positive integer (or None: the physical cores, "
                      f"{physical_cores()} here); got {n_threads!r}")


@functools.lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on: distinct (physical id, core id) pairs
    in /proc/cpuinfo; the logical CPUs where /proc/cpuinfo does not say (macOS, Windows)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cores = _cores_from_cpuinfo(allowed)
    if cores:
        return cores
    return len(allowed) if allowed else (os.cpu_count() or 1)


def _cores_from_cpuinfo(allowed: set[int] | None) -> int:
    try:
        with open("/proc/cpuinfo") as f:
            blocks = f.read().strip().split("\n\n")
    except OSError:
        return 0
    cores = set()
    for block in blocks:
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" not in fields or "processor" not in fields:
            return 0  # this kernel does not describe cores (some ARM and VM kernels)
        if allowed is None or int(fields["processor"]) in allowed:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores)


@contextlib.contextmanager
def torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run the block on ``n_threads`` intra-op threads (None: leave the setting alone), then restore
    the caller's setting. Other threads running PyTorch ops during the block see it too: PyTorch
    has one setting per process."""
    before = torch.get_num_threads()
    if n_threads is None or n_threads == before:
        yield
        return
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

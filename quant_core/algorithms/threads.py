"""Per-layer solvers (GPTQ, QuantEase) run on one CPU thread.

Their work is thousands of small tensor operations (one or a few per column); with more
intra-op threads each of them pays a thread-pool hand-off, and on a 2-core machine shared
with other jobs the waiting threads spin: measured on SmolLM2 layers, 2 threads took 5-60x
the CPU time of 1 thread for the same GPTQ or QuantEase result, and ``torch.cholesky_inverse``
alone 240x (0.97 vs 0.004 CPU s at 576 x 576). Calibration forwards keep every thread.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

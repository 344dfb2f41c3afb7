"""How our Triton kernels are compiled: for the GPU, or through Triton's interpreter.

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


def jit(fn):
    if interpreting():
        from triton.runtime.interpreter import InterpretedFunction
        return InterpretedFunction(fn)
    return triton.jit(fn)

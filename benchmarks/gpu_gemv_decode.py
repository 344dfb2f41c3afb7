"""Decode of the synthetic Llama-3-8B with the shipped CUDA picks against an earlier table's (issue 18):
bf16 through the lean step, then int4 g128 with each table in turn, batches 1 and 16, one process.

A one-token prompt keeps the prefill on row counts the tables answer (1 and 16), so neither run tunes;
otherwise as gpu_speed_model.decode_section (CUDA-graph replay of the step).

  python benchmarks/gpu_gemv_decode.py OLD_cuda_defaults.json [--layers 32] [--steps 64]
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quant_core.config import QuantConfig  # noqa: E402
from quant_core.kernels import cuda_kernel  # noqa: E402
from quant_core.quantize import quantize  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_speed_model import synthetic_llama, tokens_per_second  # noqa: E402 - same folder


def use_table(path: Path) -> None:
    """Every CUDA kernel object (the model's layers and any the decoder made) forgets its picks and
    takes them from ``path`` at its next call."""
    cuda_kernel.DEFAULTS_FILE = path
    cuda_kernel._shipped.cache_clear()
    cuda_kernel.CACHE.best.clear()
    for obj in gc.get_objects():
        if isinstance(obj, cuda_kernel.CudaKernel):
            obj._configs.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old_table")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args()
    rate = {}

    def measure(name: str, model, b: int, **kw) -> None:
        rate[(name, b)] = tps = tokens_per_second(model, b, prompt=1, steps=args.steps, **kw)[0]
        print(f"decode {name} batch {b}: {tps:.1f} tok/s ({tps / rate[('bf16 lean', b)]:.2f}x bf16 lean)", flush=True)

    model = synthetic_llama(args.layers)
    for b in (1, 16):
        measure("bf16 lean", model, b, step="lean")
    del model
    torch.cuda.empty_cache()
    model = synthetic_llama(args.layers)
    quantize(model, QuantConfig(weight_dtype="int4", group_size=128, modules_to_not_convert=[]), progress=False)
    for name, table in (("int4 before", Path(args.old_table)), ("int4 after", cuda_kernel.DEFAULTS_FILE)):
        use_table(table)
        for b in (1, 16):
            measure(name, model, b)


if __name__ == "__main__":
    main()

"""Device check of programmatic dependent launch (PDL) in the CUDA kernels: a chain of square layers,
each layer's input the previous layer's output, replayed from a CUDA graph with PDL on, must equal
the same chain run eagerly with PDL off, for every launch config of the few-row, mma and wgmma
kernels. A kernel that read x (or wrote its output or the split-K workspace) before pdl_wait()
would race with the layer before it and differ here. (On the H200 the few-row kernel differed,
int4 M=1; it is now never launched with PDL, so its configs here only check the launches around it.)

python benchmarks/gpu_speed_cuda_pdl.py      (prints one line per format and row count; exit 1 on a mismatch)
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quant_core.formats import get_format, pack_codes  # noqa: E402
from quant_core.kernels.base import LayerSpec  # noqa: E402
from quant_core.kernels.cuda_kernel import CudaKernel, candidates  # noqa: E402
from quant_core.packed import PackedWeight  # noqa: E402

K = 2048  # square layers: each output is the next input
LAYERS = 6


def layer(fmt_name: str, group: int) -> CudaKernel:
    fmt = get_format(fmt_name)
    g = 1 if group <= 0 else K // group
    codes = torch.randint(0, 1 << fmt.bits, (K, K), dtype=torch.uint8, device="cuda")
    scales = (torch.rand(K, g, device="cuda") * 0.02 + 0.01).half()  # keeps activations near unit size
    packed = PackedWeight(fmt, K, K, group, pack_codes(codes, fmt.bits), scales, None)
    return CudaKernel(packed, LayerSpec.of(packed, "bf16", "cuda"))


def chain(kerns, cfg, x):
    for kern in kerns:
        x = kern._launch(x, cfg)
        x = x / x.float().norm(dim=-1, keepdim=True).to(x.dtype) * 40  # a kernel between layers (as a norm)
        x = kern._launch(x, cfg)  # and back to back: this launch reads what the one before wrote
    return x


def main() -> int:
    torch.manual_seed(0)
    bad = 0
    for fmt_name, group in (("int4", 128), ("nf4", 64), ("int8", -1)):
        kerns = [layer(fmt_name, group) for _ in range(LAYERS)]
        w = kerns[0].weight
        for m in (1, 12, 40):
            x = torch.randn(m, K, device="cuda", dtype=torch.bfloat16)
            worst, n = 0.0, 0
            for cfg in candidates(m, K, K, w.group, kind=w.kind):
                if cfg.dequant:
                    continue
                kerns[0].lib.qmm_set_pdl(0)
                ref = chain(kerns, cfg, x).float()
                kerns[0].lib.qmm_set_pdl(1)
                chain(kerns, cfg, x)  # warm-up outside capture
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    out = chain(kerns, cfg, x)
                g.replay()
                torch.cuda.synchronize()
                err = ((out.float() - ref).norm() / ref.norm()).item()
                worst, n = max(worst, err if err == err else float("inf")), n + 1
                if not err < 0.1:  # split-K atomics reorder fp32 sums (bf16 rounding flips); a race is ~1
                    bad += 1
                    print(f"pdl {fmt_name} M={m} {cfg.label()}: BAD graph vs eager rel diff {err:.3g}", flush=True)
            print(f"pdl {fmt_name} M={m}: {n} configs, {2 * LAYERS} chained launches each, worst graph-vs-eager "
                  f"rel diff {worst:.2e}", flush=True)
    print(f"pdl check: {bad} bad", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

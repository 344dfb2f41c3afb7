"""Device check of programmatic dependent launch (PDL) in the CUDA kernels: a chain of layers, each
layer's input the previous layer's output, run with PDL on (replayed from a CUDA graph, and eagerly),
must equal the same chain run eagerly with PDL off, for every launch config of the few-row, mma and
wgmma kernels. A kernel that read x (or wrote its output or the split-K workspace) before pdl_wait()
would race with the layer before it and differ here.

Two chains: square layers (K x K, back to back and around a norm) and an MLP-like one (K -> 2K -> K,
so consecutive launches differ in grid and in which kernel of the pick runs). Session 7's few-row
kernel (x through the read-only path, which ptxas hoisted above the wait) differed in the square chain,
int4 M=1, up to 1.1; tests/quant_core/kernels/test_cuda_pdl_order.py now reads that order off the SASS.

python benchmarks/gpu_speed_cuda_pdl.py      (prints one line per chain, format and row count; exit 1 on a mismatch)
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
FORMATS = (("int4", 128), ("nf4", 64), ("int8", -1))


def layer(fmt_name: str, group: int, k: int, n: int) -> CudaKernel:
    fmt = get_format(fmt_name)
    g = 1 if group <= 0 else k // group
    codes = torch.randint(0, 1 << fmt.bits, (n, k), dtype=torch.uint8, device="cuda")
    scales = (torch.rand(n, g, device="cuda") * 0.02 + 0.01).half()  # keeps activations near unit size
    packed = PackedWeight(fmt, k, n, group, pack_codes(codes, fmt.bits), scales, None)
    return CudaKernel(packed, LayerSpec.of(packed, "bf16", "cuda"))


def square_chain(kerns, cfgs, x):
    for kern in kerns:
        x = kern._launch(x, cfgs[0])
        x = x / x.float().norm(dim=-1, keepdim=True).to(x.dtype) * 40  # a kernel between layers (as a norm)
        x = kern._launch(x, cfgs[0])  # and back to back: this launch reads what the one before wrote
    return x


def mlp_chain(kerns, cfgs, x):
    for up, down in zip(kerns[::2], kerns[1::2]):
        x = down._launch(up._launch(x, cfgs[0]), cfgs[1])  # K -> 2K -> K, back to back
        x = x / x.float().norm(dim=-1, keepdim=True).to(x.dtype) * 40
    return x


def compare(lib, run, x) -> tuple[float, float]:
    """(graph with PDL, eager with PDL) rel diffs against eager without PDL."""
    lib.qmm_set_pdl(0)
    ref = run(x).float()
    lib.qmm_set_pdl(1)
    eager = run(x).float()  # also the warm-up outside capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = run(x)
    g.replay()
    torch.cuda.synchronize()
    diffs = [((o.float() - ref).norm() / ref.norm()).item() for o in (out, eager)]
    return tuple(d if d == d else float("inf") for d in diffs)


def check(chain_name, run, kern_pairs, m, x, labels) -> int:
    bad, worst, n = 0, 0.0, 0
    for cfgs in kern_pairs:
        graph, eager = compare(labels[0].lib, lambda v: run(cfgs, v), x)
        worst, n = max(worst, graph, eager), n + 1
        if not (graph < 0.1 and eager < 0.1):  # split-K atomics reorder fp32 sums (bf16 flips); a race is ~1
            bad += 1
            print(f"pdl {chain_name} {labels[1]} M={m} {'/'.join(c.label() for c in cfgs)}: BAD rel diff "
                  f"graph {graph:.3g} eager {eager:.3g}", flush=True)
    print(f"pdl {chain_name} {labels[1]} M={m}: {n} configs, worst rel diff vs eager without PDL {worst:.2e}",
          flush=True)
    return bad


def main() -> int:
    torch.manual_seed(0)
    bad = 0
    for fmt_name, group in FORMATS:
        sq = [layer(fmt_name, group, K, K) for _ in range(LAYERS)]
        mlp = [layer(fmt_name, group, *kn) for _ in range(2) for kn in ((K, 2 * K), (2 * K, K))]
        w = sq[0].weight
        for m in (1, 12, 16, 40):
            x = torch.randn(m, K, device="cuda", dtype=torch.bfloat16)
            cands = [c for c in candidates(m, K, K, w.group, kind=w.kind) if not c.dequant]
            bad += check("square", lambda cfgs, v: square_chain(sq, cfgs, v), [(c,) for c in cands], m, x,
                         (sq[0], fmt_name))
            ups = [c for c in candidates(m, 2 * K, K, w.group, kind=w.kind) if not c.dequant]
            downs = [c for c in candidates(m, K, 2 * K, w.group, kind=w.kind) if not c.dequant]
            pairs = [(u, downs[i % len(downs)]) for i, u in enumerate(ups)]  # every up and every down config
            pairs += [(ups[i % len(ups)], d) for i, d in enumerate(downs[len(ups):], start=len(ups))]
            bad += check("mlp", lambda cfgs, v: mlp_chain(mlp, cfgs, v), pairs, m, x, (mlp[0], fmt_name))
    print(f"pdl check: {bad} bad", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

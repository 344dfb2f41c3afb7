"""Experiment (issue 15 part 1): the decode step compiled by torch.compile around the C++ GEMV
registered as a torch.library custom op, against the lean step's single C++ call.

    python benchmarks/cpu_speed_compile.py [--threads 2] [--steps 32] [--repeats 3]

SmolLM2 int4 g128 with an int8 head, batch 1. The compiled step keeps every shape static
(attention over the whole preallocated cache with a mask, cache writes by index_copy_ at a
position tensor), so it compiles once. Prints median ms per token of each and compile time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROJECTIONS = []  # custom-op argument -> quant_core.decode.projection.Projection


@torch.library.custom_op("quantllm_experiment::gemv", mutates_args=())
def gemv(x: torch.Tensor, index: int) -> torch.Tensor:
    p = PROJECTIONS[index]
    return p(x.contiguous(), torch.empty(x.shape[0], p.out_features))


@gemv.register_fake
def _(x, index):
    return x.new_empty(x.shape[0], PROJECTIONS[index].out_features)


def _op(p) -> int:
    PROJECTIONS.append(p)
    return len(PROJECTIONS) - 1


def compiled_step(m, k_cache, v_cache):
    """A step function over the lean model's weights, for torch.compile."""
    from quant_core.decode.lean_ops import TorchOps, rotary
    ops = TorchOps()
    ids = [(_op(layer.qkv), _op(layer.o), _op(layer.gate_up), _op(layer.down)) for layer in m.layers]
    head = _op(m.head)
    hq, hk, d, inter = m.heads * m.head_dim, m.kv_heads * m.head_dim, m.head_dim, m.intermediate

    def step(x, cos, sin, pos, valid):
        for index, layer in enumerate(m.layers):
            qkv = gemv(ops.norm(x, layer.norm1), ids[index][0])
            q = rotary(qkv[:, :hq].view(1, 1, m.heads, d), cos, sin).transpose(1, 2)
            k = rotary(qkv[:, hq: hq + hk].view(1, 1, m.kv_heads, d), cos, sin).transpose(1, 2)
            k_cache[index].index_copy_(2, pos, k)
            v_cache[index].index_copy_(2, pos, qkv[:, hq + hk:].view(1, 1, m.kv_heads, d).transpose(1, 2))
            att = F.scaled_dot_product_attention(q, k_cache[index], v_cache[index], attn_mask=valid,
                                                 scale=m.scaling, enable_gqa=True)
            x = x + gemv(att.transpose(1, 2).reshape(1, hq), ids[index][1])
            gu = gemv(ops.norm(x, layer.norm2), ids[index][2])
            x = x + gemv(F.silu(gu[:, :inter]) * gu[:, inter:], ids[index][3])
        return gemv(ops.norm(x, m.norm), head)
    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from quant_core.config import QuantConfig
    from quant_core.decode import LeanDecoder
    from quant_core.output_head import quantize_head
    from quant_core.loading import load_model
    from quant_core.quantize import quantize
    model, _ = load_model(None)
    quantize(model, QuantConfig(weight_dtype="int4", group_size=128))
    quantize_head(model, "int8")
    prompt = torch.randint(100, 40000, (1, 64), generator=torch.Generator().manual_seed(0))
    max_len = 64 + args.steps + 2
    lean = LeanDecoder(model, 1, max_len)
    m = lean.lean
    k_cache, v_cache = torch.zeros_like(lean.k_cache), torch.zeros_like(lean.v_cache)
    step = torch.compile(compiled_step(m, k_cache, v_cache), dynamic=False)

    def run_compiled(position):
        with torch.inference_mode():
            x = m.embed(torch.tensor([[5]])).float().reshape(1, -1)
            cos, sin = m.rotary(x, torch.tensor([[position]]))
            valid = (torch.arange(max_len) <= position)[None, None, None, :]
            return step(x, cos, sin, torch.tensor([position]), valid)

    t = time.perf_counter()
    run_compiled(64)
    compile_s = time.perf_counter() - t
    rates = {"compiled custom-op step": [], "lean one-call C++ step": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        for i in range(args.steps):
            run_compiled(64 + i)
        rates["compiled custom-op step"].append((time.perf_counter() - t) / args.steps * 1e3)
        lean.prefill(prompt)
        t = time.perf_counter()
        tokens = torch.tensor([5])
        for _ in range(args.steps):
            tokens = lean.step(tokens).argmax(-1)
        rates["lean one-call C++ step"].append((time.perf_counter() - t) / args.steps * 1e3)
    import os
    print(f"threads {args.threads}, load {os.getloadavg()}, compile {compile_s:.0f} s")
    for name, ms in rates.items():
        print(f"{name}: {statistics.median(ms):.2f} ms / token (runs {[round(v, 2) for v in ms]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

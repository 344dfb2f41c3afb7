"""Whole-model parts of gpu_speed.py: decode tokens/s and GPTQ on a synthetic Llama-3-8B.

The model is built from its config with random weights directly on the GPU (never
downloaded). Decode runs through the product's decoders (``quant_core.decode``): a static
KV cache and the one-token step captured once in a CUDA graph and replayed (so per-kernel
launch costs do not hide kernel speed); bf16 through both transformers' modules
(``StaticDecoder``) and the CUDA lean step, quantized formats through ``make_decoder``'s pick.
"""
from __future__ import annotations

import time

import torch

from quant_core.config import QuantConfig
from quant_core.quantize import quantize

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False)


def synthetic_llama(layers: int, device="cuda", **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(num_hidden_layers=layers, **{**LLAMA3_8B, **overrides})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def decoder_for(model, batch: int, max_len: int, step: str = "auto", **lean_options):
    """``step``: "auto" the product's pick (``make_decoder``), "static" transformers' modules
    (``StaticDecoder``), "lean" the CUDA lean step (``CudaLeanDecoder``; a float model's q/k/v and
    gate/up stacked into one matmul each, as quantized models' are; ``lean_options`` its other arguments)."""
    from quant_core.decode import StaticDecoder, make_decoder

    if step == "static":
        return StaticDecoder(model, batch, max_len)
    if step == "lean":
        from quant_core.decode.cuda_lean import CudaLeanDecoder
        return CudaLeanDecoder(model, batch, max_len, stack_float=True, **lean_options)
    return make_decoder(model, batch, max_len)


def tokens_per_second(model, batch: int, prompt: int = 32, steps: int = 64, step: str = "auto",
                      **lean_options) -> tuple[float, str, float]:
    """Greedy decode through a decoder of the product (``decoder_for``; on CUDA each step is one
    CUDA-graph replay, captured at the first step), timed after a few warm-up steps.
    Also returns the seconds the prefill and warm-up took: first use, kernel tuning included."""
    t_start = time.perf_counter()
    dec = decoder_for(model, batch, prompt + steps + 1, step, **lean_options)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device=model.device)
    token = dec.prefill(ids).argmax(-1)
    for _ in range(4):
        token = dec.step(token).argmax(-1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    warm_s = t0 - t_start
    n = steps - 8
    for _ in range(n):
        token = dec.step(token).argmax(-1)
    torch.cuda.synchronize()
    mode = ("graph" if dec.graphed else "eager") + (" lean" if type(dec).__name__ == "CudaLeanDecoder" else "")
    return batch * n / (time.perf_counter() - t0), mode, warm_s


# (label, quantization, decoder step): bf16 through both steps, so that a reader sees what the step
# gains apart from the kernels; the ratios divide by the faster bf16 of the two
DECODE_FORMATS = [("bf16", None, "static"), ("bf16 (lean step)", None, "lean"),
                  ("int4 g128", dict(weight_dtype="int4", group_size=128), "auto"),
                  ("nf4 g64", dict(weight_dtype="nf4", group_size=64), "auto"),
                  ("int8 per-channel", dict(weight_dtype="int8", group_size=-1), "auto")]


class PeerLinear(torch.nn.Module):
    """A peer library's quantized linear (``forward(x2d)`` from gpu_peers.py) in place of nn.Linear."""

    def __init__(self, forward):
        super().__init__()
        self.peer_forward = forward

    def forward(self, x):
        return self.peer_forward(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


def swap_linears(model, build) -> None:
    """Every nn.Linear (lm_head included) becomes the peer's layer, built from its bf16 weight."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, PeerLinear(build(child.weight.data)))


def decode_section(run: str, layers: int, batches=(1, 16), peers=(), on_row=None) -> list[dict]:
    """Rows of gpu_speed.json's ``decode``: every linear quantized (lm_head included), RTN.
    ``peers``: (label, builder) pairs from gpu_peers.py, run through the same decoder."""
    base, out = {}, []
    rows = list(DECODE_FORMATS)
    rows += [(f"peer {label}", None, "auto", build) for label, build in peers if not isinstance(build, str)]
    for label, qcfg, step, *peer in rows:
        build = peer[0] if peer else None
        row = {"run": run, "layers": layers, "weights": label}
        try:
            model = synthetic_llama(layers)
            if qcfg:
                quantize(model, QuantConfig(**qcfg, modules_to_not_convert=[]), progress=False)
            if build:
                swap_linears(model, build)
            torch.cuda.empty_cache()
            row["batches"] = {}
            for b in batches:
                tps, mode, warm_s = tokens_per_second(model, b, step=step)
                if label.startswith("bf16"):
                    base[b] = max(base.get(b, 0.0), tps)
                row["batches"][str(b)] = {"tok_s": tps, "mode": mode, "x_bf16": tps / base[b],
                                          "first_use_s": warm_s}
            row["kernels"] = sorted({m.kernel.name for m in model.modules()
                                     if getattr(m, "kernel", None) is not None and hasattr(m.kernel, "name")})
            _rescale(out + [row], base)
            print(f"decode {label}: kernels {row['kernels']}; " + "; ".join(
                f"batch {b}: {v['tok_s']:.1f} tok/s ({v['x_bf16']:.2f}x, {v['mode']}, first use {v['first_use_s']:.0f} s)"
                for b, v in row["batches"].items()), flush=True)
        except Exception as exc:  # noqa: BLE001 - a peer that cannot decode is a table entry
            if not build:
                raise
            row = {**row, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:100]}"}  # one table line
        print(f"decode {row}", flush=True)
        out.append(row)
        if on_row:
            on_row(out)  # saved row by row: a run cut short keeps what it measured
        model = None
        torch.cuda.empty_cache()
    return out


def _rescale(rows: list[dict], base: dict) -> None:
    """Every row's x_bf16 against the faster bf16 step so far (the second bf16 row may beat the first)."""
    for row in rows:
        for b, cell in row.get("batches", {}).items():
            cell["x_bf16"] = cell["tok_s"] / base[int(b)]


def gptq_section(run: str, layers: int, samples: int = 128, seqlen: int = 2048) -> dict:
    """GPTQ int4 g128 through the block-sequential driver, blocks on the GPU one at a time."""
    # random init of 8B parameters takes minutes on the CPU and seconds on the GPU
    model = synthetic_llama(layers, device="cuda").to("cpu")
    torch.cuda.empty_cache()
    calib = [torch.randint(0, model.config.vocab_size, (1, seqlen)) for _ in range(samples)]
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    # GPTQ alone (scale tuning's "auto" would skip an 8B model on one H200 anyway: it estimates 194 GiB)
    quantize(model, QuantConfig(algorithm="gptq", weight_dtype="int4", group_size=128, scale_tuning_steps=0),
             calibration=calib, device="cuda", progress=True)
    torch.cuda.synchronize()
    out = {"run": run, "layers": layers, "samples": samples, "seqlen": seqlen, "wall_s": time.perf_counter() - t0,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    print(f"gptq {out}", flush=True)
    return out

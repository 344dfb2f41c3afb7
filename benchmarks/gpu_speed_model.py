"""Whole-model parts of gpu_speed.py: decode tokens/s and GPTQ on a synthetic Llama-3-8B.

The model is built from its config with random weights directly on the GPU (never
downloaded). Decode: a static KV cache, the one-token step captured once in a CUDA
graph and replayed (so per-kernel launch costs do not hide kernel speed); the
attention mask is a preallocated tensor updated in place, so the step has no
host-side decisions. If capture fails the eager time is reported, labelled so.
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


class GraphedDecoder:
    """One-token decode step of ``model`` over a static cache, replayed from a CUDA graph."""

    def __init__(self, model, batch: int, prompt: int, steps: int, use_graph: bool = True):
        from transformers import StaticCache

        dev, dt = model.model.embed_tokens.weight.device, model.model.embed_tokens.weight.dtype
        self.model, self.max_len = model, prompt + steps + 1
        self.cache = StaticCache(config=model.config, max_cache_len=self.max_len)
        self.mask = torch.full((batch, 1, 1, self.max_len), float("-inf"), device=dev, dtype=dt)
        self.pos = torch.tensor([prompt], device=dev)
        ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device=dev)
        with torch.no_grad():  # prefill (its own mask shape; not timed)
            pm = torch.full((batch, 1, prompt, self.max_len), float("-inf"), device=dev, dtype=dt)
            pm[:, :, :, :prompt] = torch.triu(torch.full((prompt, prompt), float("-inf"), device=dev), 1)
            out = model(ids, attention_mask=pm, past_key_values=self.cache,
                        cache_position=torch.arange(prompt, device=dev), use_cache=True)
        self.token = out.logits[:, -1:].argmax(-1)
        self.mask[:, :, :, :prompt + 1] = 0
        self.graph = None
        if use_graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(2):  # warm-up: kernels chosen, tuned and compiled before capture
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.no_grad():
                self.logits = self._step()

    def _step(self):
        return self.model(self.token, attention_mask=self.mask, past_key_values=self.cache,
                          cache_position=self.pos, use_cache=True).logits

    def advance(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            logits = self.logits
        else:
            with torch.no_grad():
                logits = self._step()
        self.token.copy_(logits[:, -1:].argmax(-1))
        self.pos += 1
        self.mask[:, :, :, self.pos] = 0  # the next position becomes visible (index tensor: no sync)


def tokens_per_second(model, batch: int, prompt: int = 32, steps: int = 64) -> tuple[float, str]:
    try:
        dec, mode = GraphedDecoder(model, batch, prompt, steps, use_graph=True), "graph"
    except Exception as exc:  # noqa: BLE001 - a model that cannot be captured is timed eagerly
        print(f"  graph capture failed ({type(exc).__name__}: {str(exc)[:160]}); timing eagerly")
        torch.cuda.synchronize()
        dec, mode = GraphedDecoder(model, batch, prompt, steps, use_graph=False), "eager"
    for _ in range(4):
        dec.advance()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = steps - 8
    for _ in range(n):
        dec.advance()
    torch.cuda.synchronize()
    return batch * n / (time.perf_counter() - t0), mode


DECODE_FORMATS = [("bf16", None), ("int4 g128", dict(weight_dtype="int4", group_size=128)),
                  ("nf4 g64", dict(weight_dtype="nf4", group_size=64)),
                  ("int8 per-channel", dict(weight_dtype="int8", group_size=-1))]


def decode_section(say, layers: int, batches=(1, 16)) -> None:
    say(f"\n## Decode, synthetic Llama-3-8B shapes ({layers} layers, random weights built on the GPU; "
        f"every linear quantized, lm_head included; RTN)\n")
    say("| weights | " + " | ".join(f"batch {b} tok/s" for b in batches) + " | × bf16 |")
    say("|---|" + "---|" * (len(batches) + 1))
    base = {}
    for label, qcfg in DECODE_FORMATS:
        model = synthetic_llama(layers)
        if qcfg:
            quantize(model, QuantConfig(**qcfg, modules_to_not_convert=[]), progress=False)
            torch.cuda.empty_cache()
        cells, ratios = [], []
        for b in batches:
            tps, mode = tokens_per_second(model, b)
            base.setdefault(b, tps)
            cells.append(f"{tps:.1f} ({mode})")
            ratios.append(f"{tps / base[b]:.2f}×")
        say(f"| {label} | " + " | ".join(cells) + " | " + " / ".join(ratios) + " |")
        del model
        torch.cuda.empty_cache()


def gptq_section(say, layers: int, samples: int = 128, seqlen: int = 2048) -> None:
    """GPTQ int4 g128 through the block-sequential driver, blocks on the GPU one at a time."""
    model = synthetic_llama(layers, device="cpu")
    calib = [torch.randint(0, model.config.vocab_size, (1, seqlen)) for _ in range(samples)]
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    quantize(model, QuantConfig(algorithm="gptq", weight_dtype="int4", group_size=128),
             calibration=calib, device="cuda", progress=False)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30
    say(f"\n## GPTQ int4 g128 on the GPU\n\nSynthetic Llama-3-8B shapes, {layers} layers, {samples} × {seqlen} "
        f"random-token calibration: wall {wall:.1f} s, peak GPU memory {peak:.2f} GiB "
        f"(model on CPU, one block at a time on the GPU).")

"""Perplexity cost of the CPU kernels' prompt path (int8 activations per 32-column block, issue 15).

SmolLM2-135M as ``QuantLLM`` loads it by default (int4 g128, int8 output head), windows of
wikitext-2 test: every position's logits from the lean step's forward with the decoder layers'
projections on the prompt path (``q8``) and on the batch path (``same``: int16 activations, within
1e-4 of fp32); the head runs the same way in both. Prints both perplexities and the relative change.

    python benchmarks/prompt_path_ppl.py [--windows 16] [--seqlen 512]
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from langchain_quant import QuantLLM
from quant_core import QuantConfig
from quant_core.decode.lean import LeanDecoder
from quant_core.evaluation import read_eval_text, windows

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2-test.txt"  # beside the checkout


def window_nll(dec: LeanDecoder, ids: torch.Tensor, prompt: bool) -> float:
    """Mean next-token loss over one window [1, T], all T positions through the lean forward."""
    t = ids.shape[1]
    x = dec._forward(ids, torch.arange(t)[None], 0, None, prompt=prompt)
    head = dec.lean.head
    logits = head(dec.ops.norm(x, dec.lean.norm), torch.empty(t, head.out_features))
    return torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]).item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--text", default=str(TEXT))
    args = parser.parse_args()
    llm = QuantLLM.from_model_id(None, task="text-generation",
                                 quantization_config=QuantConfig(weight_dtype="int4", group_size=128))
    engine = llm.get_engine()
    batches = windows(engine.tokenizer, read_eval_text(args.text), args.seqlen, args.windows)
    dec = LeanDecoder(engine.model, 1, args.seqlen)
    nll = {"same": 0.0, "q8": 0.0}
    start = time.perf_counter()
    with torch.inference_mode():
        for window in batches:
            for path in nll:
                nll[path] += window_nll(dec, window[None], prompt=path == "q8")
    ppl = {path: math.exp(v / len(batches)) for path, v in nll.items()}
    print(f"SmolLM2-135M int4 g128 + int8 head, {len(batches)} windows x {args.seqlen} tokens of {Path(args.text).name}"
          f" ({time.perf_counter() - start:.0f} s)")
    print(f"perplexity, prompt path same (int16 activations): {ppl['same']:.4f}")
    kernel = dec.lean.layers[0].gate_up.kernel
    block = kernel.prompt_block() if kernel is not None else None
    print(f"perplexity, prompt path q8 (int8 per {block} columns): {ppl['q8']:.4f}")
    print(f"change: {100 * (ppl['q8'] / ppl['same'] - 1):+.3f} %")


if __name__ == "__main__":
    main()

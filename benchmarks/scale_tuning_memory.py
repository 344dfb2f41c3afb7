"""Scale tuning's "auto" default on a CUDA GPU: what it chose, its memory estimate, the peak it took.

Quantizes SmolLM2 (the embedded GGUF, or --model) with one algorithm at every default but the format
(int4 g128 sym), on the GPU, as a user's short call does, and prints one JSON line: the resolved
scale_tuning_steps, ``scale_tuning_auto.training_bytes`` and torch's peak allocated memory, seconds.
The estimate decides whether "auto" trains at all, so it must stay above the peak.

    python benchmarks/scale_tuning_memory.py --algorithm gptq
"""
from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithm", default="gptq")
    p.add_argument("--model", default=None, help="model source for quant_core.loading.load_model (default: embedded)")
    p.add_argument("--synthetic", action="store_true",
                   help="SmolLM2-135M's shape with random weights and random calibration tokens (nothing to load)")
    args = p.parse_args(argv)

    import torch

    from quant_core import QuantConfig, quantize
    from quant_core.scale_tuning_auto import training_bytes

    config = QuantConfig(algorithm=args.algorithm, weight_dtype="int4_fullrange", group_size=128)
    if args.synthetic:
        model, tok = synthetic_smollm2(), None
        calibration = list(torch.randint(0, model.config.vocab_size, (config.n_samples, config.seqlen),
                                         generator=torch.Generator().manual_seed(0)).split(config.calibration_batch_size))
    else:
        from quant_core.loading import load_model
        (model, tok), calibration = load_model(args.model), None
    estimate = training_bytes(model, config)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    quantized = quantize(model, config, calibration=calibration, tokenizer=tok, progress=False, device="cuda")
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps({
        "algorithm": args.algorithm, "gpu": torch.cuda.get_device_name(),
        "scale_tuning_steps": quantized.config.quantization_config["scale_tuning_steps"],
        "estimate_gib": round(estimate / 2**30, 2), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "seconds": round(seconds, 1)}), flush=True)


def synthetic_smollm2():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


if __name__ == "__main__":
    main()

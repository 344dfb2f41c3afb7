"""scripts/test-vllm, step 1 (quantllm's own .venv): quantize the embedded SmolLM2-135M-Instruct,
export it to GPTQ and AWQ, check that the exporter refuses what vLLM cannot load, load the exports
back and write quantllm's greedy tokens for vLLM to match (OUT/ours.json).

Usage: python scripts/vllm_prepare.py OUT
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

from quant_core import QuantConfig, quantize
from quant_core.engine import GenerationEngine, GenerationParams
from quant_core.errors import ExportError
from quant_core.interop import export
from quant_core.loading import embedded_model_dir, load_model

NEW_TOKENS = 16
QUESTION = "What is the capital of France?"
# name -> (quantization recipe, export target). GPTQ v1 (what vLLM reads) stores zero - 1, so asymmetric int4
# with a zero point of 0 cannot go there: GPTQ gets the symmetric recipe, AWQ the asymmetric one it was made for.
EXPORTS = {
    "gptq": (QuantConfig(weight_dtype="int4", group_size=64, scheme="sym"), "gptq"),
    "awq": (QuantConfig(weight_dtype="int4", group_size=64, scheme="asym"), "awq"),
}


def prompts(tokenizer) -> list[str]:
    chat = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                         add_generation_prompt=True)
    return ["The capital of France is", chat]


def greedy_tokens(model, tokenizer) -> list[dict]:
    """Prompt ids (vLLM is given the same ids) and the greedy completion ids, EOS included."""
    engine = GenerationEngine(model, tokenizer)
    rows = []
    for prompt in prompts(tokenizer):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        completion = out[0, len(ids):].tolist()
        text = engine.generate([prompt], GenerationParams(max_new_tokens=NEW_TOKENS))[0].text
        rows.append({"prompt": prompt, "prompt_ids": ids, "tokens": completion, "text": text})
    return rows


def refusal_of_a_partial_group(base, tokenizer, out: Path) -> str:
    """g128 over SmolLM2's 576 columns leaves a partial last group, which vLLM's GPTQ loader cannot load."""
    model = copy.deepcopy(base)
    quantize(model, QuantConfig(weight_dtype="int4", group_size=128, scheme="sym"), progress=False)
    try:
        export(model, tokenizer, out / "gptq-g128", "gptq")
    except ExportError as exc:
        return str(exc)
    raise SystemExit("the GPTQ exporter wrote a g128 checkpoint over 576 columns: it should refuse it")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    base, tokenizer = load_model()
    result = {"float": {"path": str(embedded_model_dir()), "rows": greedy_tokens(base, tokenizer)}}
    print("refused as expected:", refusal_of_a_partial_group(base, tokenizer, out))
    for name, (config, target) in EXPORTS.items():
        start = time.perf_counter()
        model = copy.deepcopy(base)
        quantize(model, config, progress=False)
        path = export(model, tokenizer, out / name, target)
        reloaded, reloaded_tokenizer = load_model(path)  # what vLLM will read, through our own importer
        result[name] = {"path": str(path), "recipe": config.to_dict(),
                        "rows": greedy_tokens(reloaded, reloaded_tokenizer)}
        print(f"{name}: {config.weight_dtype} g{config.group_size} {config.scheme} exported to {path} "
              f"in {time.perf_counter() - start:.0f} s; our answer: {result[name]['rows'][1]['text']!r}")
    (out / "ours.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

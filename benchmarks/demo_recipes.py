"""Which recipe should scripts/demo show? Quantize the embedded SmolLM2-135M-Instruct with each recipe,
save it, reload it packed, and ask the README's question (greedy, 32 tokens); print one JSON line per
recipe (answer, checkpoint size, quantization time) and record them in benchmarks/results/demo_recipes.json
(demo_recipes.md is rendered from it).

Usage: python benchmarks/demo_recipes.py [NAME ...]     (default: every recipe below)
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import demo_recipes_report
import report

from quant_core import QuantConfig, quantize
from quant_core.engine import GenerationEngine, GenerationParams
from quant_core.loading import load_model
from quant_core.serialization import load_quantized, save_quantized

QUESTION = "What is the capital of France?"
RECIPES = {
    "float": None,
    "rtn-int4-g128-sym": dict(weight_dtype="int4", group_size=128, scheme="sym"),
    "rtn-int4-g128-asym": dict(weight_dtype="int4", group_size=128, scheme="asym"),
    "rtn-int4-g64-asym": dict(weight_dtype="int4", group_size=64, scheme="asym"),
    "rtn-int4-g32-sym": dict(weight_dtype="int4", group_size=32, scheme="sym"),
    "rtn-int4-g32-asym": dict(weight_dtype="int4", group_size=32, scheme="asym"),
    "rtn-int8-g128-sym": dict(weight_dtype="int8", group_size=128, scheme="sym"),
    "rtn-int4-g64-asym-mse": dict(weight_dtype="int4", group_size=64, scheme="asym", mse_clip=True),
    "gptq-int4-g128-sym": dict(algorithm="gptq", weight_dtype="int4", group_size=128, scheme="sym", n_samples=32),
}


def answer(model, tokenizer) -> str:
    engine = GenerationEngine(model, tokenizer)
    prompt = engine.render_chat([{"role": "user", "content": QUESTION}])
    return engine.generate([prompt], GenerationParams(max_new_tokens=32))[0].text.strip()


def directory_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def measure(name: str, base, tokenizer) -> dict:
    config = RECIPES[name]
    if config is None:
        return {"name": name, "answer": answer(base, tokenizer), "checkpoint_mb": None, "quantize_s": None}
    model = copy.deepcopy(base)
    start = time.perf_counter()
    quantize(model, QuantConfig(**config), tokenizer=tokenizer, progress=False)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        save_quantized(model, tokenizer, Path(tmp) / name)
        reloaded, reloaded_tokenizer = load_quantized(Path(tmp) / name)
        size = directory_mb(Path(tmp) / name)
    return {"name": name, "answer": answer(reloaded, reloaded_tokenizer), "checkpoint_mb": round(size, 1),
            "quantize_s": round(seconds, 1)}


def main(names: list[str]) -> None:
    base, tokenizer = load_model()
    data = report.load(demo_recipes_report.NAME)
    run = report.add_run(data, report.new_run("cpu", "python benchmarks/demo_recipes.py " + " ".join(names)))
    measured = {}
    for name in names:
        measured[name] = {**measure(name, base, tokenizer), "run": run}
        print(json.dumps(measured[name]), flush=True)
    kept = [r for r in data.get("rows", []) if r["name"] not in measured]
    data["rows"] = kept + list(measured.values())
    report.save(demo_recipes_report.NAME, data)
    report.write_markdown(demo_recipes_report.NAME, demo_recipes_report.render(data))


if __name__ == "__main__":
    main(sys.argv[1:] or list(RECIPES))

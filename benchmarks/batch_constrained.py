"""The constrained rows of benchmarks/batch.py: validity and cost of constrained decoding.

SmolLM2-135M-Instruct int4 g128 on CPU, greedy, prompts rendered exactly as ChatQuant's
``with_structured_output(Landmark)`` renders them (schema shown in the system turn):
  - validity: 50 prompts, decoded 8 at a time, with the Landmark schema enforced and without;
    a reply is valid if ``Landmark.model_validate_json`` accepts it (code fences stripped for the free run);
  - cost at batch 1 and batch 8, free vs constrained, alternating modes, medians of ``repeats``:
    end-to-end tokens/s (completion tokens / wall time of ``generate``, prefill included) and the
    decoding step alone ((time of an n-token run - time of a 1-token run) / (n - 1) steps).
The load average is printed with every figure. Figures go to results/batch_constrained.json (every
reply too); the markdown is rendered from it (batch_constrained_report.py).
"""
from __future__ import annotations

import os
import statistics
import time

from langchain_core.messages import HumanMessage
from pydantic import BaseModel, ValidationError

from langchain_quant import ChatQuant
from langchain_quant.tools import reply_schema
from quant_core.constrained import Constraint
from quant_core.engine import GenerationParams


class Landmark(BaseModel):
    """A landmark, building, invention or place."""
    name: str
    country: str
    year: int
    famous_for: str


SUBJECTS = [
    "the Eiffel Tower", "the Great Wall of China", "the Colosseum", "the Taj Mahal", "Machu Picchu",
    "the Statue of Liberty", "Big Ben", "the Sydney Opera House", "the Golden Gate Bridge", "Stonehenge",
    "the Parthenon", "the Leaning Tower of Pisa", "Mount Rushmore", "the Kremlin", "the Alhambra",
    "Angkor Wat", "Petra", "Chichen Itza", "the Burj Khalifa", "the Brandenburg Gate",
    "Neuschwanstein Castle", "the Sagrada Familia", "the Louvre", "the Acropolis", "the Forbidden City",
    "the Panama Canal", "the Suez Canal", "the Hoover Dam", "the Empire State Building", "the CN Tower",
    "the Christ the Redeemer statue", "the Tower of London", "Versailles", "the Pyramids of Giza",
    "the Sphinx", "the Berlin Wall", "the Arc de Triomphe", "the Space Needle", "the Atomium",
    "the Little Mermaid statue", "the Matterhorn", "Niagara Falls", "the Grand Canyon", "Mount Fuji",
    "the Dead Sea", "the telephone", "the printing press", "the light bulb", "the steam engine", "penicillin",
]
MAX_STRING_CHARS = 32  # three free strings of <= 32 characters fit max_new_tokens=64 even when the model loops
PROMPT = "Describe {} as a JSON object with name, country, year and famous_for. Reply with JSON only."


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prompts_for(chat: ChatQuant, schema_format: dict, subjects: list[str]) -> list[str]:
    return [chat.render([HumanMessage(PROMPT.format(s))], response_format=schema_format) for s in subjects]


def is_valid(text: str) -> bool:
    text = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        Landmark.model_validate_json(text)
        return True
    except ValidationError:
        return False


def validity(engine, prompts: list[str], params, constraint) -> tuple[dict, list[dict]]:
    """Valid replies with and without ``constraint`` and every reply, batch by batch (constrained then
    free, so that a run stopped early still compares like with like)."""
    valid, replies = {"constrained": 0, "free": 0}, []
    for start in range(0, len(prompts), 8):
        batch = prompts[start:start + 8]
        for mode, c in (("constrained", constraint), ("free", None)):
            for i, out in enumerate(engine.generate(batch, params, [c] * len(batch))):
                ok = is_valid(out.text)
                valid[mode] += ok
                replies.append({"prompt": start + i, "mode": mode, "valid": ok, "text": out.text,
                                "finish_reason": out.finish_reason, "tokens": out.completion_tokens})
        print(f"  prompts {start + len(batch)}/{len(prompts)}: valid constrained {valid['constrained']}, "
              f"free {valid['free']} (load average {load_average()})", flush=True)
    return valid, replies


def timed(engine, prompts: list[str], tokens: int, constraint) -> tuple[float, int, int]:
    """Wall seconds of one ``generate`` of up to ``tokens`` new tokens per row, its steps (the longest row)
    and the tokens it produced (all rows)."""
    start = time.perf_counter()
    outs = engine.generate(prompts, GenerationParams(max_new_tokens=tokens), [constraint] * len(prompts))
    return time.perf_counter() - start, max(o.completion_tokens for o in outs), sum(o.completion_tokens for o in outs)


def cost(engine, prompts: list[str], constraint, repeats: int, tokens: int) -> dict:
    """Per mode: medians of end-to-end tokens/s and of the decoding step, modes alternating each repeat."""
    samples = {"free": [], "constrained": []}
    for rep in range(repeats):
        for mode in (("free", "constrained") if rep % 2 == 0 else ("constrained", "free")):
            c = constraint if mode == "constrained" else None
            one, _, _ = timed(engine, prompts, 1, c)
            full, steps, produced = timed(engine, prompts, tokens, c)
            samples[mode].append({"e2e_tok_s": produced / full, "step_ms": 1e3 * (full - one) / max(steps - 1, 1),
                                  "steps": steps, "load": load_average()})
            print(f"  B={len(prompts)} {mode} repeat {rep + 1}: {samples[mode][-1]}", flush=True)
    out = {}
    for mode, runs in samples.items():
        step = statistics.median(r["step_ms"] for r in runs)
        out[mode] = {"e2e_tok_s": statistics.median(r["e2e_tok_s"] for r in runs), "step_ms": step,
                     "decode_tok_s": 1e3 * len(prompts) / step, "samples": runs}
    out["e2e_loss_pct"] = 100 * (1 - out["constrained"]["e2e_tok_s"] / out["free"]["e2e_tok_s"])
    out["decode_loss_pct"] = 100 * (1 - out["constrained"]["decode_tok_s"] / out["free"]["decode_tok_s"])
    return out


def measure(llm, repeats: int, max_new_tokens: int, timed_tokens: int, prompts_count: int = len(SUBJECTS)) -> dict:
    """Every figure of the constrained rows (validity first: it also warms the vocabulary and kernels up);
    ``prompts_count=0``: the timings only, after one warm-up run of each mode."""
    chat = ChatQuant(llm=llm, max_string_chars=MAX_STRING_CHARS)
    engine = llm.get_engine()
    schema = Landmark.model_json_schema()
    response_format = {"type": "json_schema", "json_schema": {"schema": schema}}
    constraint = Constraint.json_schema(reply_schema(schema, MAX_STRING_CHARS))  # what ChatQuant enforces
    prompts = prompts_for(chat, response_format, SUBJECTS[:max(prompts_count, 8)])
    loads, results, replies = {"before": load_average()}, {}, []
    if prompts_count:
        valid, replies = validity(engine, prompts, GenerationParams(max_new_tokens=max_new_tokens), constraint)
        loads["after validity"] = load_average()
        results["validity"] = {"prompts": len(prompts), **valid}
    else:  # warm-up: the vocabulary, the grammar and the kernels' first use stay out of the timings
        timed(engine, prompts[:8], 2, constraint), timed(engine, prompts[:8], 2, None)
    for batch in (1, 8):
        results[f"batch {batch}"] = {"batch": batch, **cost(engine, prompts[:batch], constraint, repeats, timed_tokens)}
        loads[f"after batch {batch}"] = load_average()
        print(f"  batch {batch}: tokens/s lost end-to-end {results[f'batch {batch}']['e2e_loss_pct']:.1f} %, "
              f"decoding step {results[f'batch {batch}']['decode_loss_pct']:.1f} %", flush=True)
    setup = {"prompts": len(prompts) if prompts_count else 0, "max_new_tokens": max_new_tokens, "max_string_chars": MAX_STRING_CHARS,
             "timed_tokens": timed_tokens, "repeats": repeats, "prompt_tokens": engine.prompt_tokens(prompts[0])}
    return {"setup": setup, "results": results, "loads": loads, "replies": replies}

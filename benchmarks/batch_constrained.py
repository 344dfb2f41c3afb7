"""The constrained rows of benchmarks/batch.py: validity and cost of constrained decoding.

SmolLM2-135M-Instruct int4 g128 on CPU, greedy, prompts rendered exactly as ChatQuant's
``with_structured_output(Landmark)`` renders them (schema shown in the system turn):
  - validity: 50 prompts, decoded 8 at a time, with the Landmark schema enforced and without;
    a reply is valid if ``Landmark.model_validate_json`` accepts it (code fences stripped for the free run);
  - cost: time per decoding step at batch 1 and batch 8, free vs constrained, alternating modes,
    medians of ``repeats``; tokens/s = rows per step / step time. The load average is printed with it.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
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
MAX_STRING_CHARS = 64  # three free strings of <= 64 characters fit max_new_tokens=96 even when the model loops
PROMPT = "Describe {} as a JSON object with name, country, year and famous_for. Reply with JSON only."


def prompts_for(chat: ChatQuant, schema_format: dict, subjects: list[str]) -> list[str]:
    return [chat.render([HumanMessage(PROMPT.format(s))], response_format=schema_format) for s in subjects]


def is_valid(text: str) -> bool:
    text = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        Landmark.model_validate_json(text)
        return True
    except ValidationError:
        return False


def validity(engine, prompts: list[str], params, constraint, log) -> tuple[int, int]:
    """Valid replies with and without ``constraint``, batch by batch (constrained then free, so that a run
    stopped early still compares like with like); every reply is appended to ``log`` as a JSON line."""
    valid = {"constrained": 0, "free": 0}
    for start in range(0, len(prompts), 8):
        batch = prompts[start:start + 8]
        for mode, c in (("constrained", constraint), ("free", None)):
            for i, out in enumerate(engine.generate(batch, params, [c] * len(batch))):
                ok = is_valid(out.text)
                valid[mode] += ok
                log.write(json.dumps({"prompt": start + i, "mode": mode, "valid": ok, "text": out.text,
                                      "finish_reason": out.finish_reason}) + "\n")
            log.flush()
        print(f"  prompts {start + len(batch)}/{len(prompts)}: valid constrained {valid['constrained']}, "
              f"free {valid['free']} (load average {os.getloadavg()[0]:.1f})", flush=True)
    return valid["constrained"], valid["free"]


def step_seconds(engine, prompts: list[str], params, constraint) -> float:
    """Seconds per decoding step (steps = the batch's longest completion)."""
    start = time.perf_counter()
    outs = engine.generate(prompts, params, [constraint] * len(prompts))
    return (time.perf_counter() - start) / max(o.completion_tokens for o in outs)


def run(llm, repeats: int, max_new_tokens: int, timed_tokens: int = 16,
        replies_log: str = "benchmarks/results/batch_constrained_replies.jsonl") -> list[str]:
    """Measure and return the markdown lines of the constrained rows (``timed_tokens``: the budget of
    the timed runs, shorter than the validity runs' ``max_new_tokens``)."""
    chat = ChatQuant(llm=llm, max_string_chars=MAX_STRING_CHARS)
    engine = llm.get_engine()
    schema = Landmark.model_json_schema()
    response_format = {"type": "json_schema", "json_schema": {"schema": schema}}
    constraint = Constraint.json_schema(reply_schema(schema, MAX_STRING_CHARS))  # what ChatQuant enforces
    prompts = prompts_for(chat, response_format, SUBJECTS)
    params = GenerationParams(max_new_tokens=max_new_tokens)
    loads, rows, timed = [os.getloadavg()], [], GenerationParams(max_new_tokens=timed_tokens)
    # validity first (each batch is printed and logged as it ends), then the timings
    with open(replies_log, "w") as log:
        valid_on, valid_off = validity(engine, prompts, params, constraint, log)
    loads.append(os.getloadavg())
    for batch in (1, 8):
        times = {"free": [], "constrained": []}
        for rep in range(repeats):
            for mode in (("free", "constrained") if rep % 2 == 0 else ("constrained", "free")):
                c = constraint if mode == "constrained" else None
                times[mode].append(step_seconds(engine, prompts[:batch], timed, c))
                print(f"  B={batch} {mode} repeat {rep + 1}: {times[mode][-1] * 1e3:.1f} ms/step "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        free, cons = statistics.median(times["free"]), statistics.median(times["constrained"])
        rows.append(f"| {batch} | {free * 1e3:.1f} | {cons * 1e3:.1f} | {batch / free:.1f} | {batch / cons:.1f} "
                    f"| {100 * (1 - free / cons):.1f} % |")
        print(rows[-1], flush=True)
        loads.append(os.getloadavg())
    return [
        "## Constrained decoding (`--constrained`)",
        "",
        f"Fixed Pydantic schema `Landmark` (name, country, year, famous_for), {len(SUBJECTS)} prompts, "
        f"max_new_tokens={max_new_tokens}, greedy, decoded 8 at a time.",
        "",
        f"Valid replies: constrained **{valid_on}/{len(SUBJECTS)}** ({100 * valid_on / len(SUBJECTS):.0f} %), "
        f"free **{valid_off}/{len(SUBJECTS)}** ({100 * valid_off / len(SUBJECTS):.0f} %).",
        "",
        f"Cost per decoding step (runs of at most {timed_tokens} tokens), medians of {repeats} (alternating modes):",
        "",
        "| batch | free ms/step | constrained ms/step | free tokens/s | constrained tokens/s | tokens/s lost |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Every reply: `{replies_log}` (JSON lines).",
        "",
        "Load average (1, 5, 15 min) before, after the validity runs, after batch 1, after batch 8: "
        + "; ".join("%.1f, %.1f, %.1f" % la for la in loads) + ".",
    ]


def write(llm, repeats: int, max_new_tokens: int, load_s: float) -> int:
    """Measure, print and write benchmarks/results/batch_constrained.md (markdown only, not yet kept as
    JSON beside the other results)."""
    lines = ["# Constrained decoding rows (benchmarks/batch.py --constrained)", "",
             f"CPU: {torch.get_num_threads()} threads, {platform.machine()}; model load + quantize {load_s:.1f} s.",
             "", *run(llm, repeats, max_new_tokens)]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "batch_constrained.md"
    out.write_text(text)
    return 0

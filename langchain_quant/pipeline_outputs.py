"""The shape of QuantLLM's results, as transformers pipelines let users ask for it:
``num_return_sequences`` (several generations per prompt) and ``return_full_text`` (the prompt before
the completion; LangChain's HuggingFacePipeline spells its opposite ``skip_prompt``).

Both are honoured, never dropped: several sequences need sampling (greedy decoding would repeat one
sequence, and transformers refuses it too), and a streamed call yields one sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quant_core.engine import GenerationEngine, GenerationOutput, GenerationParams
from quant_core.engine_types import OUTPUT_SETTINGS
from quant_core.errors import ConfigError

SKIP_PROMPT = "skip_prompt"  # langchain-huggingface's per-call switch: True = completion only


@dataclass(frozen=True)
class OutputShape:
    num_return_sequences: int = 1
    return_full_text: bool = False

    def check(self, params: GenerationParams, task: str, streaming: bool = False) -> OutputShape:
        n = self.num_return_sequences
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"num_return_sequences must be a positive integer; got {n!r}")
        if n > 1 and params.temperature == 0:
            raise ConfigError(f"num_return_sequences={n} needs sampling (greedy decoding gives one sequence "
                              f"{n} times): pass do_sample=True or a temperature > 0")
        if n > 1 and streaming:
            raise ConfigError(f"num_return_sequences={n}: a stream yields one sequence; call generate() for several")
        if self.return_full_text and task != "text-generation":
            raise ConfigError(f"return_full_text is for text-generation models; a {task} model's output does not "
                              f"continue its input")
        return self


def split_output_settings(*layers: dict[str, Any] | None) -> tuple[OutputShape, list[dict[str, Any]]]:
    """Take ``num_return_sequences``, ``return_full_text`` and ``skip_prompt`` out of settings layers
    (defaults first, a call's own last); the rest are generation settings."""
    shape: dict[str, Any] = {}
    rest = []
    for layer in layers:
        layer = dict(layer or {})
        for key in OUTPUT_SETTINGS:
            if layer.get(key) is not None:
                shape[key] = layer.pop(key)
            layer.pop(key, None)
        skip = layer.pop(SKIP_PROMPT, None)
        if skip is not None:
            shape["return_full_text"] = not skip
        rest.append(layer)
    if not isinstance(shape.get("return_full_text", False), bool):
        raise ConfigError(f"return_full_text must be True or False; got {shape['return_full_text']!r}")
    return OutputShape(**shape), rest


def generate_sequences(engine: GenerationEngine, prompts: list[str], params: GenerationParams,
                       shape: OutputShape, batch_size: int, constraint=None) -> list[list[GenerationOutput]]:
    """``shape.num_return_sequences`` outputs per prompt, ``batch_size`` rows per batched generation.
    With a seed, sequence ``i`` samples with ``seed + i`` (reproducible, and not all the same).
    ``constraint``: a quant_core.constrained.Constraint every output follows (or None)."""
    n = shape.num_return_sequences
    if params.seed is None or n == 1:
        rows = [p for p in prompts for _ in range(n)]
        flat = _in_batches(engine, rows, params, batch_size, constraint)
    else:
        per_seed = [_in_batches(engine, prompts, _with_seed(params, params.seed + i), batch_size, constraint)
                    for i in range(n)]
        flat = [per_seed[i][j] for j in range(len(prompts)) for i in range(n)]
    return [flat[j * n:(j + 1) * n] for j in range(len(prompts))]


def shown_text(prompt: str, output: GenerationOutput, shape: OutputShape) -> str:
    return prompt + output.text if shape.return_full_text else output.text


def _in_batches(engine, prompts: list[str], params: GenerationParams, batch_size: int,
                constraint=None) -> list[GenerationOutput]:
    outputs: list[GenerationOutput] = []
    extra = () if constraint is None else (constraint,)  # unconstrained calls keep generate's two-argument form
    for start in range(0, len(prompts), batch_size):
        outputs.extend(engine.generate(prompts[start:start + batch_size], params, *extra))
    return outputs


def _with_seed(params: GenerationParams, seed: int) -> GenerationParams:
    return GenerationParams(**{**params.__dict__, "seed": seed})

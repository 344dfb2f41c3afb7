"""Generation settings as LangChain and transformers pipelines spell them -> the engine's GenerationParams."""
from __future__ import annotations

from typing import Any

# pipeline / invoke keyword -> GenerationParams field
_NAMES = {
    "max_new_tokens": "max_new_tokens", "max_tokens": "max_new_tokens",
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
    "repetition_penalty": "repetition_penalty", "seed": "seed",
    "stop": "stop", "stop_sequence": "stop",
}
# accepted for compatibility with transformers pipelines, with no effect here (and why)
_IGNORED = {
    "return_full_text",  # completions never repeat the prompt, as in LangChain's HuggingFacePipeline
    "num_return_sequences", "pad_token_id", "eos_token_id",  # the engine knows the model's own
}


def generation_params(base: dict[str, Any] | None, overrides: dict[str, Any] | None = None,
                      stop: list[str] | None = None):
    """Merge pipeline_kwargs (``base``), per-call kwargs and ``stop`` into validated GenerationParams.

    ``do_sample=False`` forces greedy decoding; ``do_sample=True`` without a temperature samples at 1.0.
    Unknown keys raise, listing the known ones, so a typo never silently changes nothing.
    """
    from quant_core.engine import GenerationParams  # torch: imported on first use, not with the package

    merged = {**(base or {}), **(overrides or {})}
    do_sample = merged.pop("do_sample", None)
    fields: dict[str, Any] = {}
    for key, value in merged.items():
        if key in _IGNORED or value is None:
            continue
        if key not in _NAMES:
            raise ValueError(f"unknown generation setting {key!r}; known: "
                             f"{', '.join(sorted(set(_NAMES) | {'do_sample'} | _IGNORED))}")
        fields[_NAMES[key]] = value
    if stop is not None:
        fields["stop"] = stop
    if isinstance(fields.get("stop"), tuple):
        fields["stop"] = list(fields["stop"])
    if do_sample is False:
        fields["temperature"] = 0.0
    elif do_sample and not fields.get("temperature"):
        fields["temperature"] = 1.0
    return GenerationParams(**fields).validate()


def usage(outputs) -> dict[str, int]:
    prompt = sum(o.prompt_tokens for o in outputs)
    completion = sum(o.completion_tokens for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

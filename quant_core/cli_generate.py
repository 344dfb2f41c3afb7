"""``quantllm generate``: one answer, streamed to a terminal as it is decoded.

Imported only when the command runs, so ``quantllm --help`` stays fast.
"""
from __future__ import annotations

import sys

from .cli_checks import check_device
from .cpu_threads import check_threads
from .engine import GenerationEngine, GenerationParams
from .errors import ConfigError
from .loading import load_model


def run_generate(args) -> int:
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, repetition_penalty=args.repetition_penalty, stop=args.stop,
                              seed=args.seed).validate()  # a bad setting fails before the model loads
    check_threads(args.threads)
    if args.raw and args.system is not None:
        raise ConfigError("--system goes through the chat template, which --raw leaves out; use one of them")
    model, tokenizer = load_model(args.model, device=check_device(args.device), verify=not args.no_verify)
    engine = GenerationEngine(model, tokenizer, n_threads=args.threads)
    prompt = prompt_text(engine, args.prompt, args.system, args.raw)
    stream = sys.stdout.isatty() if args.stream is None else args.stream
    if stream:
        print_stream(engine.stream(prompt, params))
    else:
        print(engine.generate([prompt], params)[0].text.strip())
    return 0


def prompt_text(engine: GenerationEngine, prompt: str, system: str | None, raw: bool) -> str:
    """The chat template's rendering of [system,] user, unless --raw or the model has no template."""
    if raw or not engine.has_chat_template:
        if system is not None:
            raise ConfigError("--system needs a chat template, and this model has none; put the instruction "
                              "in the prompt instead")
        return prompt
    messages = [{"role": "system", "content": system}] if system is not None else []
    return engine.render_chat(messages + [{"role": "user", "content": prompt}])


def print_stream(deltas) -> None:
    """Print deltas as they come, without the answer's leading whitespace (as the non-streamed answer)."""
    started = False
    for delta in deltas:
        if not started:
            delta = delta.lstrip()
            started = bool(delta)
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")

"""LangChain-level comparison (issue 15): our ``QuantLLM`` against LangChain's own ``LlamaCpp``.

Used by cpu_speed.py's "langchain" child. The same 16 prompts x 32 new tokens, greedy, through
``chain.batch`` of each (QuantLLM: SmolLM2 int4 g128 at its default ``batch_size``; LlamaCpp: the same
SmolLM2 GGUF, same threads), medians of repeats; whether our batch's outputs equal our own
invoke loop's; and single-prompt latency of each (first streamed chunk, and the whole answer).
"""
from __future__ import annotations

import statistics
import time


def _first_chunk_and_total(chain, inputs) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    for _ in chain.stream(inputs):
        if first is None:
            first = time.perf_counter() - start
    return first, time.perf_counter() - start


def _measure(chain, inputs, repeats, count_tokens) -> dict:
    chain.invoke(inputs[0])  # first use: kernels chosen, weights repacked
    rates, outputs = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = chain.batch(inputs)
        rates.append(count_tokens(out) / (time.perf_counter() - start))
        outputs = outputs or out
    # a different question each time, never the one just answered: llama-cpp-python reuses its KV cache
    # for the prompt prefix it evaluated last, so the same prompt again costs it ~2 ms instead of a prefill
    # (the template's shared prefix is still reused, as a chain with a fixed template gets in use)
    latency = [_first_chunk_and_total(chain, inputs[1 + i % (len(inputs) - 1)]) for i in range(repeats)]
    return {"batch_tok_s": statistics.median(rates), "first_chunk_s": statistics.median(f for f, _ in latency),
            "single_prompt_s": statistics.median(t for _, t in latency), "outputs": outputs}


def child_langchain(args) -> dict:
    from langchain_community.llms import LlamaCpp

    from batch import QUESTIONS, TEMPLATE  # noqa: E402  (sibling module: the prompts of benchmarks/batch.py)
    from langchain_quant import QuantLLM
    from quant_core import QuantConfig
    from quant_core.loading import embedded_model_path

    inputs = [{"question": q} for q in QUESTIONS]
    new = args.langchain_new_tokens
    ours = QuantLLM.from_model_id(None, task="text-generation",
                                  quantization_config=QuantConfig(weight_dtype="int4", group_size=128),
                                  pipeline_kwargs={"max_new_tokens": new, "do_sample": False})  # default batch_size
    tok = ours.get_engine().tokenizer
    count = lambda outs: sum(len(tok(o, add_special_tokens=False).input_ids) for o in outs)  # noqa: E731
    chain = TEMPLATE | ours
    result = {"quantllm": _measure(chain, inputs, args.repeats, count)}
    loop = [chain.invoke(x) for x in inputs]
    result["quantllm"]["batch_equals_invoke_loop"] = loop == result["quantllm"].pop("outputs")
    llama = LlamaCpp(model_path=str(embedded_model_path()), n_threads=args.threads, n_batch=512, n_ctx=1024,
                     temperature=0.0, max_tokens=new, verbose=False)
    result["llamacpp"] = _measure(TEMPLATE | llama, inputs, args.repeats, count)
    result["llamacpp"].pop("outputs")
    return result

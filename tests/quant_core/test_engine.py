"""The shared generation engine on tiny random models (byte-level tokenizer, no downloads)."""
import functools
import threading
import time

import pytest
import torch

from quant_core import QuantConfig, quantize
from quant_core.engine import GenerationEngine, GenerationOutput, GenerationParams
from quant_core.testing import CHATML_TEMPLATE, byte_tokenizer, tiny_llama_lm, tiny_t5

PROMPTS = ["hello world", "a", "the quick brown fox jumps over"]
GREEDY = GenerationParams(max_new_tokens=10)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer(CHATML_TEMPLATE)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama_lm()


def count_forwards(model):
    """Wraps model.forward; returns the list of batch sizes it was called with."""
    calls, forward = [], model.forward

    @functools.wraps(forward)  # keeps the signature the engine inspects
    def counted(*args, **kwargs):
        ids = kwargs.get("input_ids")
        ids = kwargs.get("decoder_input_ids") if ids is None else ids
        calls.append(ids.shape[0])
        return forward(*args, **kwargs)
    model.forward = counted
    return calls


def fresh_stop(text, start):
    """A 2-character piece of ``text`` at or after ``start`` that does not occur earlier."""
    for i in range(start, len(text) - 1):
        if text.find(text[i:i + 2]) == i:
            return text[i:i + 2]
    raise AssertionError(f"no usable stop string in {text!r}")


def hf_greedy(model, tok, prompt, n):
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
    start = 0 if model.config.is_encoder_decoder else ids.shape[1]
    return tok.decode(out[0, start:], skip_special_tokens=True)


@pytest.mark.parametrize("kv_cache", ["static", "dynamic"])
def test_batch_matches_one_by_one_and_transformers_generate(llama, tok, kv_cache):
    engine = GenerationEngine(llama, tok, kv_cache=kv_cache)
    assert engine.kv_cache == kv_cache
    batch = engine.generate(PROMPTS, GREEDY)
    assert batch == [engine.generate([p], GREEDY)[0] for p in PROMPTS]
    if kv_cache == "static":  # the default; transformers' generate is the slow part of this test
        assert [o.text for o in batch] == [hf_greedy(llama, tok, p, 10) for p in PROMPTS]
    assert [o.prompt_tokens for o in batch] == [len(tok(p).input_ids) for p in PROMPTS]
    assert all(o.completion_tokens == 10 and o.finish_reason == "length" for o in batch)


def test_one_forward_per_step_for_the_whole_batch(tok):
    model = tiny_llama_lm()
    calls = count_forwards(model)
    GenerationEngine(model, tok, max_batch_size=2).generate(PROMPTS, GenerationParams(max_new_tokens=5))
    assert calls == [2] * 5 + [1] * 5  # two batches (2 + 1 prompts), five steps each


def test_seq2seq_batch_matches_transformers_generate(tok):
    model = tiny_t5()
    with torch.no_grad():
        model.lm_head.weight[0] = 0  # a random T5 likes to emit <pad>; make it emit text
    engine = GenerationEngine(model, tok)
    batch = engine.generate(PROMPTS, GREEDY)
    assert batch == [engine.generate([p], GREEDY)[0] for p in PROMPTS]
    assert [o.text for o in batch] == [hf_greedy(model, tok, p, 10) for p in PROMPTS]
    assert all(o.text for o in batch)


def test_stop_string_cuts_text_and_ends_early(llama, tok):
    engine = GenerationEngine(llama, tok)
    full = engine.generate([PROMPTS[2]], GenerationParams(max_new_tokens=20))[0].text
    stop = fresh_stop(full, 3)
    out = engine.generate([PROMPTS[2]], GenerationParams(max_new_tokens=20, stop=[stop]))[0]
    assert out.text == full[:full.index(stop)]
    assert out.finish_reason == "stop" and out.completion_tokens < 20


def test_batch_stops_once_every_row_is_done(tok):
    model = tiny_llama_lm()
    engine = GenerationEngine(model, tok)
    texts = [o.text for o in engine.generate(PROMPTS[:2], GenerationParams(max_new_tokens=30))]
    stops = [fresh_stop(texts[0], 2), fresh_stop(texts[1], 3)]
    calls = count_forwards(model)
    outs = engine.generate(PROMPTS[:2], GenerationParams(max_new_tokens=30, stop=stops))
    assert all(o.finish_reason == "stop" for o in outs)
    assert len(calls) == max(o.completion_tokens for o in outs) < 30


def test_eos_ends_a_row_with_reason_eos(tok):
    model = tiny_llama_lm()
    steps = []

    def eos_after_three(_module, _inputs, logits):
        steps.append(1)
        if len(steps) > 3:
            logits[..., 2] = 1e4
        return logits
    model.lm_head.register_forward_hook(eos_after_three)
    out = GenerationEngine(model, tok).generate(["hi"], GenerationParams(max_new_tokens=10))[0]
    assert out.finish_reason == "eos" and out.completion_tokens == 4


def test_stream_deltas_join_to_the_generated_text(llama, tok):
    engine = GenerationEngine(llama, tok)
    full = engine.generate([PROMPTS[2]], GenerationParams(max_new_tokens=16))[0].text
    deltas = list(engine.stream(PROMPTS[2], GenerationParams(max_new_tokens=16)))
    assert len(deltas) > 1 and "".join(deltas) == full
    stop = fresh_stop(full, 5)
    stopped = list(engine.stream(PROMPTS[2], GenerationParams(max_new_tokens=16, stop=[stop])))
    assert "".join(stopped) == full[:full.index(stop)]


def test_seeded_sampling_is_reproducible(llama, tok):
    engine = GenerationEngine(llama, tok)
    params = GenerationParams(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.9,
                              repetition_penalty=1.3, seed=7)
    first = engine.generate(["hello"], params)[0].text
    assert engine.generate(["hello"], params)[0].text == first
    others = {engine.generate(["hello"], GenerationParams(max_new_tokens=12, temperature=1.0, seed=s))[0].text
              for s in range(4)}
    assert len(others) > 1


@pytest.mark.parametrize("prompts, params, error", [
    ([], None, ValueError),
    ("a string", None, TypeError),
    (["ok", 3], None, TypeError),
    (["ok"], GenerationParams(stop=[1]), TypeError),
    (["ok"], GenerationParams(stop="\n"), TypeError),
    (["ok"], GenerationParams(max_new_tokens=0), ValueError),
    (["ok"], GenerationParams(top_p=0), ValueError),
    (["x" * 600], None, ValueError),  # longer than the 512-token context window
])
def test_bad_input_fails_before_any_forward(tok, prompts, params, error):
    model = tiny_llama_lm()
    calls = count_forwards(model)
    with pytest.raises(error):
        GenerationEngine(model, tok).generate(prompts, params)
    assert calls == []


def slow_down_forward(model) -> tuple[list[bool], list[int]]:
    """Make each forward pass of ``model`` last 20 ms; returns the lists it fills, per pass:
    whether another pass was running at the same time, and the batch size."""
    inside, overlaps, sizes, forward = [0], [], [], model.forward

    @functools.wraps(forward)
    def slow_forward(*args, **kwargs):
        inside[0] += 1
        overlaps.append(inside[0] > 1)
        sizes.append(kwargs["input_ids"].shape[0])
        time.sleep(0.02)  # give the other threads time to queue up
        try:
            return forward(*args, **kwargs)
        finally:
            inside[0] -= 1
    model.forward = slow_forward
    return overlaps, sizes


def generate_in_threads(engines: list, prompts: list[str]) -> list:
    """One thread per prompt, the i-th on ``engines[i % len(engines)]``; outputs in prompt order."""
    results = {}

    def call(i, prompt):
        results[i] = engines[i % len(engines)].generate([prompt], GREEDY)[0]
    threads = [threading.Thread(target=call, args=(i, p)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[i] for i in range(len(prompts))]


def test_concurrent_calls_never_overlap_and_are_micro_batched(tok):
    model = tiny_llama_lm()
    engine = GenerationEngine(model, tok)
    expected = {p: engine.generate([p], GREEDY)[0] for p in PROMPTS * 2}
    overlaps, sizes = slow_down_forward(model)
    assert generate_in_threads([engine], PROMPTS * 2) == [expected[p] for p in PROMPTS * 2]
    assert not any(overlaps)
    assert max(sizes) > 1  # waiting single calls were run as one batch


def test_engines_of_one_model_share_its_forward_lock(tok):
    model = tiny_llama_lm()
    # a user's own engine and one per tokenizer: each may exist, yet the model runs one pass at a time
    engines = [GenerationEngine(model, tok), GenerationEngine.for_model(model, byte_tokenizer(CHATML_TEMPLATE))]
    expected = {p: engines[0].generate([p], GREEDY)[0] for p in PROMPTS}
    overlaps, _ = slow_down_forward(model)
    assert generate_in_threads(engines, PROMPTS * 2) == [expected[p] for p in PROMPTS * 2]
    assert overlaps and not any(overlaps)


def test_quantized_model_batches_like_it_loops(tok):
    model = quantize(tiny_llama_lm(), QuantConfig(group_size=32), progress=False)
    engine = GenerationEngine(model, tok)
    batch = engine.generate(PROMPTS, GREEDY)
    assert batch == [engine.generate([p], GREEDY)[0] for p in PROMPTS]


def test_render_chat_uses_the_template_and_explains_a_missing_one(llama, tok):
    engine = GenerationEngine(llama, tok)
    text = engine.render_chat([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert engine.has_chat_template and engine.context_window == 512
    bare = GenerationEngine(llama, byte_tokenizer())
    assert not bare.has_chat_template
    with pytest.raises(ValueError, match="chat_template"):
        bare.render_chat([{"role": "user", "content": "Hi"}])
    given = GenerationEngine(llama, byte_tokenizer(), chat_template=CHATML_TEMPLATE)
    assert given.render_chat([{"role": "user", "content": "Hi"}]) == text


def test_kv_cache_choice():
    assert GenerationEngine(tiny_llama_lm(), byte_tokenizer()).kv_cache == "static"
    assert GenerationEngine(tiny_t5(), byte_tokenizer()).kv_cache == "dynamic"
    with pytest.raises(ValueError, match="decoder-only"):
        GenerationEngine(tiny_t5(), byte_tokenizer(), kv_cache="static")
    with pytest.raises(ValueError, match="kv_cache"):
        GenerationEngine(tiny_llama_lm(), byte_tokenizer(), kv_cache="paged")


def test_output_is_a_plain_dataclass():
    out = GenerationOutput("a", 1, 2, "eos")
    assert (out.text, out.prompt_tokens, out.completion_tokens, out.finish_reason) == ("a", 1, 2, "eos")


def test_model_with_engine_stays_deep_copyable():
    import copy

    from quant_core.engine import GenerationEngine
    from quant_core.testing import byte_tokenizer, tiny_llama_lm

    model = tiny_llama_lm()
    engine = GenerationEngine.for_model(model, byte_tokenizer())
    assert GenerationEngine.for_model(model, engine.tokenizer) is engine
    copy.deepcopy(model)  # raised "cannot pickle '_thread.lock'" when the engine lived on the model

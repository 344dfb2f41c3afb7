"""QuantLlamaLLM on a tiny random Llama: types, token counts, chat template, kwargs, callbacks, errors."""
import asyncio

import pytest

pytest.importorskip("llama_index.core", reason="needs the llamaindex extra: pip install '.[llamaindex]'")

from llama_index.core import Settings  # noqa: E402
from llama_index.core.base.llms.base import BaseLLM  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole  # noqa: E402
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler  # noqa: E402
from llama_index.core.llms.custom import CustomLLM  # noqa: E402

from llamaindex_quant import QuantLlamaLLM  # noqa: E402
from quant_core import QuantConfig, QuantLinear  # noqa: E402
from quant_core.engine import GenerationParams  # noqa: E402

PROMPT = "the quick brown fox"
MESSAGES = [ChatMessage(role=MessageRole.SYSTEM, content="be brief"),
            ChatMessage(role=MessageRole.USER, content="the lazy dog")]


@pytest.fixture(scope="module")
def llm(tiny_pair):
    model, tokenizer = tiny_pair
    return QuantLlamaLLM.from_model(model, tokenizer, max_new_tokens=6)


def prompt_len(llm, prompt, special=True):
    return len(llm.engine.tokenizer(prompt, add_special_tokens=special)["input_ids"])


def test_standard_llamaindex_class_checks(llm):
    names = [c.__name__ for c in type(llm).__mro__]
    assert BaseLLM.__name__ in names and CustomLLM in type(llm).__mro__
    assert QuantLlamaLLM.class_name() == "QuantLlamaLLM"
    assert llm.to_dict()["class_name"] == "QuantLlamaLLM"


def test_metadata_comes_from_model_config_and_tokenizer(tiny_pair, make_tiny_tokenizer):
    model, tokenizer = tiny_pair
    llm = QuantLlamaLLM.from_model(model, tokenizer, max_new_tokens=5)
    meta = llm.metadata
    assert meta.context_window == model.config.max_position_embeddings == 128
    assert meta.num_output == 5
    assert meta.is_chat_model is True
    plain = QuantLlamaLLM.from_model(model, make_tiny_tokenizer(chat_template=None))
    assert plain.metadata.is_chat_model is False
    assert plain.metadata.num_output == 256  # no generation_config.max_new_tokens: the default


def test_complete_returns_text_and_exact_token_counts(llm):
    r = llm.complete(PROMPT)
    assert isinstance(r, CompletionResponse) and isinstance(r.text, str)
    usage = r.additional_kwargs
    rendered = llm.render_completion(PROMPT)  # the chat template's user turn (it starts with BOS)
    assert rendered == "<s><|user|>the quick brown fox</s><|assistant|>"
    assert usage["prompt_tokens"] == prompt_len(llm, rendered, special=False)
    assert 1 <= usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert r.raw["usage"] == usage
    expected = llm.engine.generate([rendered], GenerationParams(max_new_tokens=6))[0]
    assert (r.text, usage["completion_tokens"], usage["finish_reason"]) == (
        expected.text, expected.completion_tokens, expected.finish_reason)


def test_stream_complete_deltas_add_up_to_the_completion(llm):
    full = llm.complete(PROMPT)
    chunks = list(llm.stream_complete(PROMPT))
    assert chunks and all(isinstance(c, CompletionResponse) for c in chunks)
    assert "".join(c.delta for c in chunks) == chunks[-1].text == full.text
    assert chunks[-1].additional_kwargs == full.additional_kwargs  # exact counts and finish reason


def test_chat_goes_through_the_chat_template(llm):
    rendered = llm.render_messages(MESSAGES)
    assert rendered == "<s><|system|>be brief</s><|user|>the lazy dog</s><|assistant|>"
    r = llm.chat(MESSAGES)
    assert isinstance(r, ChatResponse) and r.message.role == MessageRole.ASSISTANT
    assert isinstance(r.message.content, str)
    # the rendered prompt starts with BOS, so none is added: the count is the template's tokens
    assert r.additional_kwargs["prompt_tokens"] == prompt_len(llm, rendered, special=False)
    assert r.message.content == llm.complete(rendered, formatted=True).text


def test_stream_chat_yields_chat_responses(llm):
    chunks = list(llm.stream_chat(MESSAGES))
    assert chunks and all(isinstance(c, ChatResponse) for c in chunks)
    assert "".join(c.delta for c in chunks) == chunks[-1].message.content == llm.chat(MESSAGES).message.content


def test_async_forms_match_the_sync_ones(llm):
    async def run():
        completion = await llm.acomplete(PROMPT)
        chat = await llm.achat(MESSAGES)
        stream = [c async for c in await llm.astream_complete(PROMPT)]
        chat_stream = [c async for c in await llm.astream_chat(MESSAGES)]
        return completion, chat, stream, chat_stream

    completion, chat, stream, chat_stream = asyncio.run(run())
    assert isinstance(completion, CompletionResponse) and completion.text == llm.complete(PROMPT).text
    assert isinstance(chat, ChatResponse) and chat.message.content == llm.chat(MESSAGES).message.content
    assert all(isinstance(c, CompletionResponse) for c in stream) and stream[-1].text == completion.text
    assert all(isinstance(c, ChatResponse) for c in chat_stream)
    assert chat_stream[-1].message.content == chat.message.content
    assert completion.additional_kwargs["completion_tokens"] >= 1


def test_generation_kwargs_pass_through_to_the_engine(llm, monkeypatch):
    seen = []
    real = llm.engine.generate
    monkeypatch.setattr(llm.engine, "generate", lambda prompts, params: seen.append(params) or real(prompts, params))
    r = llm.complete(PROMPT, max_tokens=3, temperature=0.7, top_p=0.9, top_k=5, repetition_penalty=1.2,
                     stop="\n", seed=1)
    assert seen[-1] == GenerationParams(max_new_tokens=3, temperature=0.7, top_p=0.9, top_k=5,
                                        repetition_penalty=1.2, stop=["\n"], seed=1)
    assert r.additional_kwargs["completion_tokens"] <= 3
    with pytest.raises(TypeError, match="max_new_tokens"):
        llm.complete(PROMPT, beam_width=4)
    with pytest.raises(ValueError, match="top_p"):
        llm.complete(PROMPT, top_p=0)


def test_complete_batch_runs_one_batched_generation(llm, monkeypatch):
    prompts = [PROMPT, "over the lazy dog and the quick fox", "fox"]
    calls = []
    real = llm.engine.generate
    monkeypatch.setattr(llm.engine, "generate", lambda p, params: calls.append(list(p)) or real(p, params))
    out = llm.complete_batch(prompts, max_new_tokens=4)
    rendered = [llm.render_completion(p) for p in prompts]
    assert calls == [rendered]  # all three in one call: the engine batches them
    assert [type(r) for r in out] == [CompletionResponse] * 3
    assert [r.additional_kwargs["prompt_tokens"] for r in out] == [prompt_len(llm, p, False) for p in rendered]
    assert all(1 <= r.additional_kwargs["completion_tokens"] <= 4 for r in out)
    chats = llm.chat_batch([MESSAGES, MESSAGES[1:]], max_new_tokens=4)
    assert [type(c) for c in chats] == [ChatResponse] * 2


def test_callbacks_fire_for_every_call(tiny_pair):
    model, tokenizer = tiny_pair
    debug = LlamaDebugHandler()
    llm = QuantLlamaLLM.from_model(model, tokenizer, max_new_tokens=3, callback_manager=CallbackManager([debug]))
    llm.complete(PROMPT)
    llm.chat(MESSAGES)
    list(llm.stream_complete(PROMPT))
    llm.complete_batch([PROMPT, PROMPT])
    pairs = debug.get_event_pairs(CBEventType.LLM)
    assert len(pairs) == 5 and all(len(p) == 2 for p in pairs)


def test_token_counting_handler_reads_the_engine_counts(tiny_pair):
    from llama_index.core.callbacks import TokenCountingHandler

    model, tokenizer = tiny_pair
    # a tokenizer that would count 1000 per string: the counts must come from the responses instead
    counter = TokenCountingHandler(tokenizer=lambda text: [0] * 1000)
    llm = QuantLlamaLLM.from_model(model, tokenizer, max_new_tokens=3, callback_manager=CallbackManager([counter]))
    r = llm.complete(PROMPT)
    assert counter.prompt_llm_token_count == r.additional_kwargs["prompt_tokens"]
    assert counter.completion_llm_token_count == r.additional_kwargs["completion_tokens"]


def test_settable_as_settings_llm(llm):
    previous = Settings._llm
    try:
        Settings.llm = llm
        assert Settings.llm is llm
    finally:
        Settings._llm = previous


def test_prompt_beyond_the_context_window_is_a_clear_error(llm):
    long_prompt = "the quick brown fox " * 60  # > 128 tokens
    with pytest.raises(ValueError, match="context window of 128 tokens.*truncate_prompt=True"):
        llm.complete(long_prompt)
    with pytest.raises(ValueError, match="context window"):
        list(llm.stream_complete(long_prompt))
    with pytest.raises(ValueError, match="leaves no room"):
        llm.complete(PROMPT, max_new_tokens=500)


def test_truncation_when_asked_is_stated(tiny_pair, caplog):
    model, tokenizer = tiny_pair
    llm = QuantLlamaLLM.from_model(model, tokenizer, max_new_tokens=4, truncate_prompt=True)
    r = llm.complete("the quick brown fox " * 60)
    usage = r.additional_kwargs
    assert usage["truncated_prompt_tokens"] > 0
    assert usage["prompt_tokens"] + 4 <= 128
    assert "cut to its last" in caplog.text


def test_quant_config_quantizes_the_model(tiny_pair, make_tiny_model):
    _, tokenizer = tiny_pair
    model = make_tiny_model(len(tokenizer))
    llm = QuantLlamaLLM.from_model(model, tokenizer, QuantConfig(weight_dtype="int4", group_size=32),
                                   max_new_tokens=3)
    assert any(isinstance(m, QuantLinear) for m in llm.engine.model.modules())
    assert llm.complete(PROMPT).additional_kwargs["completion_tokens"] >= 1
    # the rule of quant_core.auto: the config the model carries is reused, another one is an error
    assert QuantLlamaLLM.from_model(model, tokenizer, QuantConfig(group_size=32)).engine is llm.engine
    with pytest.raises(ValueError, match="already quantized with a different config: weight_dtype='int4_fullrange'"):
        QuantLlamaLLM.from_model(model, tokenizer, QuantConfig(weight_dtype="nf4", group_size=32))


def test_bad_construction_fails_clearly(tiny_pair, tmp_path, monkeypatch):
    model, tokenizer = tiny_pair
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        QuantLlamaLLM(str(tmp_path / "no-such-model"))
    with pytest.raises(FileNotFoundError, match="neither a local path nor reachable"):
        QuantLlamaLLM("no-such-org/no-such-model")
    with pytest.raises(ValueError, match="tokenizer"):
        QuantLlamaLLM(model)
    with pytest.raises(TypeError, match="loaded transformers model"):
        QuantLlamaLLM.from_model(42, tokenizer)
    with pytest.raises(ValueError, match="unknown generate_kwargs"):
        QuantLlamaLLM.from_model(model, tokenizer, generate_kwargs={"num_beams": 2})


def test_built_from_a_local_dir_and_from_a_quantllm_dir(tiny_pair, make_tiny_model, tmp_path):
    from quant_core.serialization import save_quantized

    _, tokenizer = tiny_pair
    float_dir = tmp_path / "float"
    make_tiny_model(len(tokenizer)).save_pretrained(float_dir)
    tokenizer.save_pretrained(float_dir)
    llm = QuantLlamaLLM(str(float_dir), quant_config={"weight_dtype": "int4", "group_size": 32}, max_new_tokens=3)
    assert llm.metadata.model_name == str(float_dir)
    assert any(isinstance(m, QuantLinear) for m in llm.engine.model.modules())
    save_quantized(llm.engine.model, llm.engine.tokenizer, tmp_path / "int4")
    reloaded = QuantLlamaLLM(tmp_path / "int4", max_new_tokens=3)
    assert any(isinstance(m, QuantLinear) for m in reloaded.engine.model.modules())
    assert reloaded.complete(PROMPT).text == llm.complete(PROMPT).text

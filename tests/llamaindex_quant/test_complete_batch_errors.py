"""Issue 17 part 4: complete_batch / chat_batch(..., return_exceptions=True) give a prompt's error as
that prompt's result and answer the others in one batched generation."""
import pytest

pytest.importorskip("llama_index.core", reason="needs the llamaindex extra: pip install '.[llamaindex]'")

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse  # noqa: E402

from llamaindex_quant import QuantLlamaLLM  # noqa: E402
from quant_core.errors import ConfigError  # noqa: E402

PROMPTS = ["the quick brown fox", "over the lazy dog"]
TOO_LONG = "the quick brown fox " * 60  # > 128 tokens, the tiny model's context window


@pytest.fixture(scope="module")
def llm(tiny_pair):
    model, tokenizer = tiny_pair
    return QuantLlamaLLM.from_model(model, tokenizer, max_new_tokens=4)


def test_complete_batch_reports_the_error_of_its_prompt_only(llm, monkeypatch):
    want = [r.text for r in llm.complete_batch(PROMPTS)]
    calls, real = [], llm.engine.generate
    monkeypatch.setattr(llm.engine, "generate", lambda p, params: calls.append(len(p)) or real(p, params))
    results = llm.complete_batch([PROMPTS[0], TOO_LONG, PROMPTS[1]], return_exceptions=True)
    assert isinstance(results[1], ConfigError) and "context window" in str(results[1])
    assert [type(results[0]), type(results[2])] == [CompletionResponse] * 2
    assert [results[0].text, results[2].text] == want
    assert calls == [2]  # the good prompts still run together


def test_chat_batch_reports_the_error_of_its_conversation_only(llm):
    good = [ChatMessage(role="user", content="the lazy dog")]
    results = llm.chat_batch([good, [ChatMessage(role="user", content=TOO_LONG)]], return_exceptions=True)
    assert isinstance(results[0], ChatResponse) and isinstance(results[1], ConfigError)


def test_without_return_exceptions_a_bad_prompt_still_raises(llm):
    with pytest.raises(ConfigError, match="context window"):
        llm.complete_batch([PROMPTS[0], TOO_LONG])

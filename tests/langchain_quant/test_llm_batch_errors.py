"""Issue 17 part 4: under return_exceptions=True a prompt's error is that prompt's result; the other
prompts are still answered (one too-long prompt failed the whole batch)."""
import asyncio

import pytest

from langchain_quant import QuantLLM
from quant_core.engine import GenerationEngine, GenerationParams
from quant_core.errors import ConfigError
from quant_core.testing import byte_tokenizer, tiny_llama_lm

PROMPTS = ["Hello", "Why?", "Name a river."]


@pytest.fixture(scope="module")
def engine():
    return GenerationEngine(tiny_llama_lm(), byte_tokenizer())


@pytest.fixture
def llm(engine):
    return QuantLLM(engine=engine, pipeline_kwargs={"max_new_tokens": 3})


def expected(engine):
    return [o.text for o in engine.generate(PROMPTS, GenerationParams(max_new_tokens=3))]


def test_batch_reports_the_error_of_its_prompt_only(llm, engine):
    too_long = "x" * (engine.context_window + 10)
    results = llm.batch([PROMPTS[0], too_long, PROMPTS[1], PROMPTS[2]], return_exceptions=True)
    assert isinstance(results[1], ConfigError) and "context window" in str(results[1])
    assert [results[0], *results[2:]] == expected(engine)


def test_abatch_reports_the_error_of_its_prompt_only(llm, engine):
    too_long = "x" * (engine.context_window + 10)
    results = asyncio.run(llm.abatch([too_long, *PROMPTS], return_exceptions=True))
    assert isinstance(results[0], ConfigError) and results[1:] == expected(engine)


def test_without_return_exceptions_the_batch_still_raises(llm, engine):
    with pytest.raises(ConfigError, match="context window"):
        llm.batch([PROMPTS[0], "x" * (engine.context_window + 10)])


def test_a_batch_without_errors_is_still_one_batched_generation(llm, engine, monkeypatch):
    want, calls, real = expected(engine), [], engine.generate

    def counted(prompts, params=None):
        calls.append(len(prompts))
        return real(prompts, params)
    monkeypatch.setattr(engine, "generate", counted)
    assert llm.batch(PROMPTS, return_exceptions=True) == want
    assert calls == [3]

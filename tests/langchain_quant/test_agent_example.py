"""examples/langchain_agent.py: its tools, and its loop on a tiny random model (the real run is in the README)."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("llguidance")

from langchain_quant import ChatQuant, QuantLLM  # noqa: E402
from quant_core.engine import GenerationEngine  # noqa: E402
from quant_core.testing import CHATML_TEMPLATE, byte_tokenizer, tiny_llama_lm  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "langchain_agent.py"


@pytest.fixture(scope="module")
def agent():
    spec = importlib.util.spec_from_file_location("langchain_agent", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calculator_computes_arithmetic_and_refuses_the_rest(agent):
    assert agent.calculator.invoke({"expression": "17 * 23 + 4"}) == "395"
    assert agent.calculator.invoke({"expression": "2 ** 10 / 4"}) == "256.0"
    for bad in ("__import__('os')", "x + 1", "1 / 0", "1 +"):
        assert agent.calculator.invoke({"expression": bad}).startswith("Error")


def test_lookup_finds_the_paragraph_with_the_answer(agent):
    assert "1871" in agent.lookup.invoke({"topic": "When was the Harrow Point lighthouse first lit?"})
    assert "42" in agent.lookup.invoke({"topic": "length of the Tidewater Valley Railway"})
    assert agent.lookup.invoke({"topic": "zz"}) == "Nothing in the notes about that."


def test_the_loop_calls_a_real_tool_then_answers(agent, capsys):
    model = tiny_llama_lm()
    model.config.max_position_embeddings = 4096
    chat = ChatQuant(llm=QuantLLM(engine=GenerationEngine(model, byte_tokenizer(CHATML_TEMPLATE))), max_tokens=120,
                     max_string_chars=8)
    answer = agent.run_agent(chat, "What is 2 + 2?")
    assert isinstance(answer, str)
    printed = capsys.readouterr().out
    assert "tool  calculator(" in printed or "tool  lookup(" in printed  # the forced call named a real tool
    assert "invalid call" not in printed

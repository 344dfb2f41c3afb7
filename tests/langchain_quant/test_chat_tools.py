"""ChatQuant's bind_tools / with_structured_output and QuantLLM's grammar= on a tiny random model.

The model's free text is noise, so every well-formed call or object below came from the grammar mask.
Schemas are bounded (enums, booleans, parallel_tool_calls=False) so a random model still finishes.
"""
import asyncio
from typing import Literal

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.exceptions import OutputParserException
from pydantic import BaseModel, ValidationError, field_validator
from typing_extensions import TypedDict

from langchain_quant import ChatQuant, QuantLLM
from langchain_quant.tools import BUILTIN, TEMPLATE
from quant_core.engine import GenerationEngine, GenerationParams
from quant_core.errors import ConfigError, MissingExtraError
from quant_core.testing import CHATML_TEMPLATE, byte_tokenizer, tiny_llama_lm

pytest.importorskip("llguidance")

# ChatML that also shows tools=, as tool-aware Hugging Face templates do
TOOLS_TEMPLATE = ("{% if tools %}{{ '<|im_start|>system\nTools: ' + (tools | map(attribute='function') "
                  "| map(attribute='name') | join(', ')) + '<|im_end|>\n' }}{% endif %}" + CHATML_TEMPLATE)


class Pick(BaseModel):
    """Pick a colour."""
    colour: Literal["red", "blue"]


class PickNever(BaseModel):
    """Pick a colour (which a validator beyond the JSON schema then refuses)."""
    colour: Literal["red", "blue"]

    @field_validator("colour")
    @classmethod
    def refuse(cls, value):
        raise ValueError("refused by a validator the JSON schema cannot express")


class PickDict(TypedDict):
    """Pick a colour."""
    colour: Literal["red", "blue"]


@tool
def flip(heads: bool) -> str:
    """Flip a coin."""
    return "flipped"


@pytest.fixture(scope="module")
def engine():
    model = tiny_llama_lm()
    model.config.max_position_embeddings = 4096  # the built-in tool prompt is ~700 byte tokens
    return GenerationEngine(model, byte_tokenizer(CHATML_TEMPLATE))


@pytest.fixture
def chat(engine):
    return ChatQuant(llm=QuantLLM(engine=engine), max_tokens=80)


def single(chat, choice):
    return chat.bind_tools([Pick, flip], tool_choice=choice, parallel_tool_calls=False)


@pytest.mark.parametrize("choice, names", [("any", {"Pick", "flip"}), ("Pick", {"Pick"}), ("flip", {"flip"})])
def test_forced_choices_always_give_one_valid_call(chat, choice, names):
    reply = single(chat, choice).invoke("Choose.")
    assert len(reply.tool_calls) == 1 and not reply.invalid_tool_calls and reply.content == ""
    call = reply.tool_calls[0]
    assert call["name"] in names and call["id"]
    if call["name"] == "Pick":
        Pick(**call["args"])
    else:
        assert isinstance(call["args"]["heads"], bool)


def test_auto_is_text_or_calls_and_none_shows_no_tools(chat):
    reply = single(chat, "auto").invoke("Choose.")
    assert reply.tool_calls or (reply.content and not reply.content.startswith("<"))
    assert "<tools>" in chat.render([HumanMessage("x")], tools=[flip], tool_choice="auto")
    plain = chat.bind_tools([flip], tool_choice="none")
    assert "<tools>" not in chat.render([HumanMessage("x")], tools=[flip], tool_choice="none")
    assert plain.invoke("Choose.").tool_calls == []


def test_stream_yields_tool_call_chunks_that_add_up_to_the_call(chat):
    bound = single(chat, "Pick")
    chunks = list(bound.stream("Choose."))
    assert any(c.tool_call_chunks for c in chunks)
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    invoked = bound.invoke("Choose.")
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [(c["name"], c["args"]) for c in invoked.tool_calls]
    assert full.usage_metadata["output_tokens"] == invoked.usage_metadata["output_tokens"]


def test_async_paths(chat):
    reply = asyncio.run(single(chat, "flip").ainvoke("Choose."))
    assert reply.tool_calls[0]["name"] == "flip"


def test_tool_results_go_back_through_the_template(chat):
    history = [HumanMessage("Flip."), AIMessage("", tool_calls=[{"name": "flip", "args": {"heads": True}, "id": "c1"}]),
               ToolMessage("flipped", tool_call_id="c1")]
    prompt = chat.render(history, tools=[flip])
    assert '<tool_call>[{"name": "flip", "arguments": {"heads": true}}]</tool_call>' in prompt
    assert "<tool_response>\nflipped\n</tool_response>" in prompt
    assert isinstance(chat.bind_tools([flip]).invoke(history), AIMessage)


def test_a_template_that_renders_tools_gets_them_and_its_own_call_format(engine):
    chat = ChatQuant(llm=QuantLLM(engine=engine), chat_template=TOOLS_TEMPLATE, max_tokens=80)
    assert chat.tool_format() is TEMPLATE
    assert ChatQuant(llm=QuantLLM(engine=engine)).tool_format() is BUILTIN
    prompt = chat.render([HumanMessage("x")], tools=[flip, Pick])
    assert "Tools: flip, Pick" in prompt and "<tools>" not in prompt
    reply = chat.bind_tools([flip, Pick], tool_choice="any", parallel_tool_calls=False).invoke("Choose.")
    assert len(reply.tool_calls) == 1 and not reply.invalid_tool_calls


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
@pytest.mark.parametrize("schema, kind", [(Pick, Pick), (PickDict, dict), (Pick.model_json_schema(), dict)])
def test_structured_output_validates_for_every_method_and_schema_kind(chat, method, schema, kind):
    result = chat.with_structured_output(schema, method=method).invoke("Choose a colour.")
    assert isinstance(result, kind)
    assert Pick.model_validate(result if kind is dict else result.model_dump())


def test_json_mode_constrains_to_a_json_object(chat):
    structured = chat.with_structured_output(None, method="json_mode", include_raw=True)
    assert structured.first.steps__["raw"].kwargs["response_format"] == {"type": "json_object"}
    out = structured.invoke("JSON please.")
    # any object is allowed, so a random model may still be inside a string when its budget runs out
    assert out["raw"].content.startswith("{")
    if out["raw"].response_metadata["finish_reason"] == "eos":
        assert isinstance(out["parsed"], dict) and out["parsing_error"] is None


def test_include_raw_returns_message_parsed_and_error(chat):
    out = chat.with_structured_output(Pick, include_raw=True).invoke("Choose a colour.")
    assert set(out) == {"raw", "parsed", "parsing_error"}
    assert isinstance(out["raw"], AIMessage) and isinstance(out["parsed"], Pick) and out["parsing_error"] is None


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_include_raw_reports_a_parsing_error_instead_of_raising(chat, method):
    """LangChain's semantics: with include_raw, a reply that does not parse gives parsed=None and the error;
    without it, the error is raised."""
    out = chat.with_structured_output(PickNever, method=method, include_raw=True).invoke("Choose a colour.")
    assert isinstance(out["raw"], AIMessage) and out["parsed"] is None
    assert isinstance(out["parsing_error"], (OutputParserException, ValidationError))
    assert "refused by a validator" in str(out["parsing_error"])
    with pytest.raises((OutputParserException, ValidationError), match="refused by a validator"):
        chat.with_structured_output(PickNever, method=method).invoke("Choose a colour.")


def test_structured_output_and_tools_fail_early_on_bad_input(chat):
    with pytest.raises(ConfigError, match="method"):
        chat.with_structured_output(Pick, method="xml")
    with pytest.raises(ConfigError, match="needs a schema"):
        chat.with_structured_output(None)
    with pytest.raises(ConfigError, match="cannot be compiled"):
        chat.with_structured_output({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}})
    with pytest.raises(ConfigError, match="not a bound tool"):
        chat.bind_tools([flip], tool_choice="flop")
    with pytest.raises(ConfigError, match="not a bound tool"):  # also when bound by hand, before generation
        chat.bind(tools=[flip], tool_choice={"type": "function", "function": {"name": "flop"}}).invoke("x")
    dangling = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}
    with pytest.raises(ConfigError, match="cannot be compiled"):
        chat.bind_tools([dangling], tool_choice="any")
    with pytest.raises(TypeError):
        chat.with_structured_output(Pick, mode="strict")


def test_bad_input_is_refused_before_the_model_is_loaded(monkeypatch):
    import quant_core.auto as auto

    monkeypatch.setattr(auto, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    lazy = ChatQuant(model="never/loaded")
    with pytest.raises(ConfigError, match="no description"):
        lazy.bind_tools([lambda x: x])
    with pytest.raises(ConfigError):
        lazy.with_structured_output({"type": "objekt"})


def test_without_the_extra_the_error_names_it(chat, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(MissingExtraError, match="structured"):
        chat.bind_tools([flip], tool_choice="any")
    with pytest.raises(MissingExtraError, match="structured"):
        chat.with_structured_output(Pick)
    assert chat.bind_tools([flip], tool_choice="none")  # nothing to constrain: no library needed
    with pytest.raises(MissingExtraError, match="structured"):
        QuantLLM(engine=chat.llm.get_engine(), grammar='root ::= "yes"')
    with pytest.raises(MissingExtraError, match="structured"):
        QuantLLM(engine=chat.llm.get_engine()).invoke("x", json_schema={"type": "object"})


def test_quant_llm_grammar_and_json_schema_fields_and_per_call(engine):
    llm = QuantLLM(engine=engine, grammar='root ::= "yes" | "no"', pipeline_kwargs={"max_new_tokens": 20})
    assert llm.invoke("Well?") in ("yes", "no")
    assert llm.batch(["a", "b"]) == [llm.invoke("a"), llm.invoke("b")]
    assert "".join(llm.stream("a")) == llm.invoke("a")
    per_call = QuantLLM(engine=engine, pipeline_kwargs={"max_new_tokens": 40})
    assert Pick.model_validate_json(per_call.invoke("x", json_schema=Pick.model_json_schema()))
    free = per_call.invoke("x")
    assert free == engine.generate(["x"], GenerationParams(max_new_tokens=40))[0].text


def test_quant_llm_refuses_bad_grammars_at_construction_and_per_call(engine):
    # pydantic wraps a validator's ConfigError into its ValidationError (both ValueErrors)
    with pytest.raises(ValueError, match="missing"):
        QuantLLM(engine=engine, grammar="root ::= missing")
    with pytest.raises(ValueError, match="not both"):
        QuantLLM(engine=engine, grammar='root ::= "a"', json_schema={"type": "object"})
    with pytest.raises(ConfigError, match="cannot be compiled"):
        QuantLLM(engine=engine).invoke("x", json_schema={"type": "objekt"})

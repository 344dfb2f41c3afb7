"""Tool calling pieces without a model: tool specs, tool_choice, the call grammar, the reply parser,
message rendering for both tool formats."""
import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_quant.messages import to_chat_dicts
from langchain_quant.tools import (BUILTIN, TEMPLATE, builtin_tool_prompt, format_calls, normalize_tool_choice,
                                   parse_tool_calls, tool_call_constraint, tool_specs)
from quant_core.errors import ConfigError


class GetWeather(BaseModel):
    """Get the weather at a place."""
    place: str = Field(description="a city")


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def lookup(topic: str) -> str:
    """Look a topic up in the notes."""
    return topic


OPENAI = {"type": "function", "function": {"name": "shout", "description": "Shout a word.",
                                           "parameters": {"type": "object", "properties": {"word": {"type": "string"}},
                                                          "required": ["word"]}}}
NAMES = ["GetWeather", "add", "lookup", "shout"]


def test_every_kind_of_tool_becomes_an_openai_spec():
    specs = tool_specs([GetWeather, add, lookup, OPENAI])
    assert [s["function"]["name"] for s in specs] == NAMES
    assert specs[1]["function"]["parameters"]["properties"]["a"]["type"] == "integer"
    assert all(s["function"]["description"] for s in specs)


def test_tools_without_description_or_with_clashing_names_are_refused():
    def bare(x: int) -> int:
        return x
    with pytest.raises(ConfigError, match="no description"):
        tool_specs([bare])
    assert len(tool_specs([GetWeather, GetWeather.model_json_schema()])) == 1  # one tool, given twice

    def twin(a: str) -> str:
        """Add two integers."""
        return a
    twin.__name__ = "add"
    with pytest.raises(ConfigError, match="unique"):
        tool_specs([add, twin])
    with pytest.raises(ConfigError, match="list of tools"):
        tool_specs(add)


@pytest.mark.parametrize("given, expected", [
    (None, "auto"), ("auto", "auto"), ("any", "any"), ("required", "any"), (True, "any"), ("none", "none"),
    ("add", "add"), ({"type": "function", "function": {"name": "lookup"}}, "lookup"),
])
def test_tool_choice_spellings(given, expected):
    assert normalize_tool_choice(given, NAMES) == expected


def test_unknown_tool_choice_is_refused():
    with pytest.raises(ConfigError, match="not a bound tool"):
        normalize_tool_choice("subtract", NAMES)
    with pytest.raises(ConfigError):
        normalize_tool_choice(3, NAMES)


def test_call_grammar_compiles_for_every_choice_and_format():
    specs = tool_specs([GetWeather, add, lookup, OPENAI])
    assert tool_call_constraint(specs, "none", BUILTIN) is None
    for fmt in (BUILTIN, TEMPLATE):
        for choice in ("auto", "any", "add"):
            for parallel in (True, False):
                tool_call_constraint(specs, choice, fmt, parallel).check()


def test_parser_splits_calls_from_text_and_flags_bad_ones():
    text = ('Sure.\n<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 2}}, '
            '{"name": "subtract", "arguments": {}}]</tool_call>')
    content, calls, invalid = parse_tool_calls(text, NAMES)
    assert content == "Sure."
    assert [(c["name"], c["args"]) for c in calls] == [("add", {"a": 1, "b": 2})]
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "tool_call"
    assert invalid[0]["name"] == "subtract" and "no bound tool" in invalid[0]["error"]


def test_parser_reads_template_style_blocks_and_string_arguments():
    text = ('<tool_call>\n{"name": "lookup", "arguments": "{\\"topic\\": \\"bees\\"}"}\n</tool_call>\n'
            '<tool_call>\n{"name": "shout", "parameters": {"word": "hi"}}\n</tool_call>')
    content, calls, invalid = parse_tool_calls(text, NAMES)
    assert content == "" and not invalid
    assert [(c["name"], c["args"]) for c in calls] == [("lookup", {"topic": "bees"}), ("shout", {"word": "hi"})]


def test_parser_keeps_a_call_repeated_with_the_same_arguments_once():
    text = ('<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "add", "arguments": {"b": 2, "a": 1}}, '
            '{"name": "add", "arguments": {"a": 2, "b": 2}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]</tool_call>')
    _, calls, invalid = parse_tool_calls(text, NAMES)
    assert [c["args"] for c in calls] == [{"a": 1, "b": 2}, {"a": 2, "b": 2}] and not invalid


def test_non_ascii_arguments_stay_unescaped_both_ways():
    call = {"name": "shout", "args": {"word": "你好啊集团"}, "id": "c1"}
    written = format_calls([call], BUILTIN)
    assert "你好啊集团" in written and "\\u" not in written
    _, calls, _ = parse_tool_calls(written, NAMES)
    assert calls[0]["args"] == {"word": "你好啊集团"}
    _, calls, _ = parse_tool_calls('<tool_call>[{"name": "shout", "arguments": {"word": "\\u4f60"}}]</tool_call>', NAMES)
    assert calls[0]["args"] == {"word": "你"}  # an escaped one is read back as the character


def test_parser_reports_malformed_and_truncated_calls():
    _, calls, invalid = parse_tool_calls('<tool_call>[{"name": "add", "arg', NAMES)
    assert not calls and "ended inside" in invalid[0]["error"]
    _, calls, invalid = parse_tool_calls("<tool_call>not json</tool_call>", NAMES)
    assert not calls and "not JSON" in invalid[0]["error"] and invalid[0]["type"] == "invalid_tool_call"
    assert parse_tool_calls("just text", NAMES) == ("just text", [], [])


def test_call_arguments_are_closed_and_their_strings_bounded():
    constraint = tool_call_constraint(tool_specs([GetWeather]), "any", BUILTIN, max_string_chars=7)
    arguments = json.loads(constraint.source[constraint.source.index("%json") + 5:])["items"]["properties"]["arguments"]
    assert arguments["additionalProperties"] is False and arguments["properties"]["place"]["maxLength"] == 7


def test_builtin_prompt_lists_every_tool():
    specs = tool_specs([GetWeather, add])
    prompt = builtin_tool_prompt(specs)
    listed = json.loads(prompt[prompt.index("<tools>") + 7:prompt.index("</tools>")])
    assert [t["name"] for t in listed] == ["GetWeather", "add"]


HISTORY = [SystemMessage("Be brief."), HumanMessage("1 + 2?"),
           AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"},
                                     {"name": "add", "args": {"a": 0, "b": 0}, "id": "c2"}]),
           ToolMessage("3", tool_call_id="c1"), ToolMessage("boom", tool_call_id="c2", status="error"),
           HumanMessage("thanks")]


def test_builtin_history_writes_calls_back_as_text_and_results_as_one_user_turn():
    dicts = to_chat_dicts(HISTORY, BUILTIN)
    assert [d["role"] for d in dicts] == ["system", "user", "assistant", "user", "user"]
    assert dicts[2]["content"] == format_calls(HISTORY[2].tool_calls, BUILTIN)
    assert json.loads(dicts[2]["content"][len("<tool_call>"):-len("</tool_call>")])[0]["arguments"] == {"a": 1, "b": 2}
    assert dicts[3]["content"] == "<tool_response>\n3\n</tool_response>\n<tool_response>\nError: boom\n</tool_response>"
    assert all(set(d) == {"role", "content"} for d in dicts)


def test_template_history_uses_hugging_face_tool_fields():
    dicts = to_chat_dicts(HISTORY, TEMPLATE)
    assert [d["role"] for d in dicts] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert dicts[2]["tool_calls"][0] == {"type": "function", "id": "c1",
                                         "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    assert dicts[3]["tool_call_id"] == "c1" and dicts[4]["content"] == "Error: boom"


def test_list_content_with_tool_use_blocks_keeps_the_text():
    message = AIMessage([{"type": "text", "text": "some text"},
                         {"type": "tool_use", "id": "c1", "name": "add", "input": {"a": 1, "b": 2}}],
                        tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}])
    assert to_chat_dicts([message], BUILTIN)[0]["content"].startswith("some text\n<tool_call>")
    with pytest.raises(ConfigError, match="text only"):
        to_chat_dicts([HumanMessage([{"type": "image_url", "image_url": {"url": "x"}}])])

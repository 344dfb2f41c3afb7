"""Tool calling for ChatQuant: tools as OpenAI-style specs, the built-in tool prompt, the grammar that makes
a forced call always valid, and the parser from reply text to LangChain tool calls.

Two reply formats, both of the "Hermes" family that small open models are trained on:

- ``BUILTIN`` (the tokenizer's chat template knows no tools, e.g. SmolLM2): the tools are listed in a
  system prompt (``builtin_tool_prompt``) and the model answers
  ``<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>`` (SmolLM2's own trained format);
- ``TEMPLATE`` (the template renders ``tools=``, e.g. Qwen2.5): one ``<tool_call>\\n{...}\\n</tool_call>``
  block per call, as those templates describe.

``tool_choice``: "auto" (a reply is either text, which may not start with "<", or tool calls), "any"
(at least one call of any bound tool), a tool's name (calls of that tool only), "none" (no tools shown,
nothing constrained). The parser finds the blocks anywhere in a reply; everything else is the content;
a call repeated with the same arguments in one reply is kept once.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.utils.function_calling import convert_to_openai_tool

from quant_core.constrained import JSON_OPTIONS, Constraint, bounded_strings, closed_objects
from quant_core.errors import ConfigError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
CHOICES = ("auto", "any", "none")
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolFormat:
    name: str
    as_list: bool  # all calls in one JSON list (built-in) or one object per block (template)
    separator: str  # between the tags and the JSON


BUILTIN = ToolFormat("builtin", as_list=True, separator="")
TEMPLATE = ToolFormat("template", as_list=False, separator="\n")


def tool_specs(tools: Sequence[Any]) -> list[dict]:
    """Pydantic classes, functions, ``@tool``s or OpenAI dicts -> OpenAI tool dicts, each checked."""
    if isinstance(tools, (str, dict)) or not isinstance(tools, Sequence):
        raise ConfigError("tools must be a list of tools (Pydantic classes, functions, @tool objects or OpenAI dicts)")
    specs, seen = [], {}
    for tool in tools:
        try:
            spec = convert_to_openai_tool(tool)
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise ConfigError(f"cannot use {tool!r} as a tool: {exc}") from exc
        function = spec.get("function", {})
        name = function.get("name")
        if not name or not isinstance(name, str):
            raise ConfigError(f"tool {tool!r} has no name")
        if not (function.get("description") or "").strip():
            raise ConfigError(f"tool {name!r} has no description: give it a docstring (or description=...), "
                              f"so that the model can tell when to call it")
        function.setdefault("parameters", {"type": "object", "properties": {}})
        if name in seen:  # the same tool given twice (say as a class and as its schema) is kept once
            if _untitled(seen[name]) != _untitled(function):
                raise ConfigError(f"two different tools are named {name!r}; tool names must be unique")
            continue
        seen[name] = function
        specs.append(spec)
    return specs


def _untitled(schema: Any) -> Any:
    """``schema`` without its "title" keys (a class and its JSON schema differ only by those)."""
    if isinstance(schema, dict):
        return {k: _untitled(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    return [_untitled(v) for v in schema] if isinstance(schema, list) else schema


def normalize_tool_choice(tool_choice: Any, names: list[str]) -> str:
    """LangChain/OpenAI spellings -> "auto", "any", "none" or a tool's name; unknown names fail here."""
    if tool_choice is None:
        return "auto"
    if tool_choice is True or tool_choice == "required":
        return "any"
    if isinstance(tool_choice, dict):  # {"type": "function", "function": {"name": ...}}
        tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if not isinstance(tool_choice, str):
        raise ConfigError(f"tool_choice must be 'auto', 'any', 'none' or a tool's name; got {tool_choice!r}")
    if tool_choice in CHOICES:
        return tool_choice
    if tool_choice not in names:
        raise ConfigError(f"tool_choice names {tool_choice!r}, which is not a bound tool; bound: {names}")
    return tool_choice


def reply_schema(schema: dict, max_string_chars: int | None) -> dict:
    """The schema a constrained reply follows: objects closed, free strings bounded (both keep every
    allowed value valid for ``schema``; see quant_core.constrained)."""
    return bounded_strings(closed_objects(schema), max_string_chars)


def call_schema(spec: dict, max_string_chars: int | None = None) -> dict:
    function = spec["function"]
    arguments = reply_schema(function["parameters"], max_string_chars)
    return {"type": "object", "properties": {"name": {"const": function["name"]}, "arguments": arguments},
            "required": ["name", "arguments"], "additionalProperties": False}


def tool_call_constraint(specs: list[dict], choice: str, fmt: ToolFormat, parallel: bool = True,
                         max_string_chars: int | None = None) -> Constraint | None:
    """The grammar a reply must follow for ``choice`` (None: "none", nothing is constrained); ``parallel=False``
    allows one call only. Arguments follow ``reply_schema`` of their tool's parameters."""
    if choice == "none":
        return None
    chosen = [s for s in specs if choice in ("auto", "any") or s["function"]["name"] == choice]
    schemas = [call_schema(s, max_string_chars) for s in chosen]
    one = {"anyOf": schemas} if len(schemas) > 1 else schemas[0]
    json_part = {"type": "array", "minItems": 1, "items": one} if fmt.as_list else one
    if fmt.as_list and not parallel:
        json_part["maxItems"] = 1
    json_part = {**json_part, "x-guidance": JSON_OPTIONS}
    sep = f" {json.dumps(fmt.separator)} " if fmt.separator else " "
    block = f'"{OPEN}"{sep}call{sep}"{CLOSE}"'
    one_block = fmt.as_list or not parallel
    calls = f"calls: {block}" if one_block else f'calls: block ("\\n" block)*\nblock: {block}'
    start = "start: TEXT | calls\nTEXT: /[^<](.|\\n)*/" if choice == "auto" else "start: calls"
    return Constraint.grammar(f"{start}\n{calls}\ncall: %json {json.dumps(json_part)}\n")


def builtin_tool_prompt(specs: list[dict]) -> str:
    """The system text that shows the tools to a model whose chat template cannot (the ``BUILTIN`` format)."""
    listed = json.dumps([s["function"] for s in specs], ensure_ascii=False)
    # Tools first, then the format: SmolLM2-135M int4 then fills magic_function(3) as {"input": 3}; with the
    # format first and the tools last it wrote {"input": 300}.
    return ("You can call functions (tools). These are the available tools, as JSON schemas:\n"
            f"<tools>{listed}</tools>\n\n"
            "To call tools, reply with nothing but a JSON list of calls between tool_call tags:\n"
            f'{OPEN}[{{"name": "tool_name", "arguments": {{"argument": "value"}}}}]{CLOSE}\n'
            "Otherwise, answer in plain text.")


def format_calls(calls: list[dict], fmt: ToolFormat) -> str:
    """LangChain tool calls -> the reply text the model would have written (for earlier turns)."""
    items = [{"name": c["name"], "arguments": c.get("args") or {}} for c in calls]
    if fmt.as_list:
        return f"{OPEN}{json.dumps(items, ensure_ascii=False)}{CLOSE}"
    return "\n".join(f"{OPEN}\n{json.dumps(item, ensure_ascii=False)}\n{CLOSE}" for item in items)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_tool_calls(text: str, names: list[str]) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Reply text -> (content outside the tool-call blocks, valid calls, malformed calls)."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for match in _BLOCK.finditer(text):
        body = match.group(1).strip()
        closed = match.group(0).endswith(CLOSE)
        try:
            items = json.loads(body)
        except json.JSONDecodeError as exc:
            why = "the reply ended inside a tool call" if not closed else f"not JSON ({exc})"
            invalid.append(_invalid(None, body, why))
            continue
        for item in items if isinstance(items, list) else [items]:
            _parse_one(item, names, calls, invalid)
    content = _BLOCK.sub("", text).strip() if calls or invalid else text
    return content, _without_repeats(calls), invalid


def _without_repeats(calls: list[ToolCall]) -> list[ToolCall]:
    """``calls`` with exact repeats (same tool, same arguments) of an earlier call in the reply left out:
    a small model decoding greedily may write the same call again and again (SmolLM2-135M calls a
    no-argument tool twice under tool_choice="any"), and running it twice in one turn gives nothing more."""
    kept, seen = [], set()
    for call in calls:
        key = (call["name"], json.dumps(call["args"], sort_keys=True))
        if key not in seen:
            seen.add(key)
            kept.append(call)
    return kept


def _parse_one(item: Any, names: list[str], calls: list, invalid: list) -> None:
    raw = json.dumps(item, ensure_ascii=False)
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        invalid.append(_invalid(None, raw, "a tool call must be an object with a 'name'"))
        return
    name = item["name"]
    args = item.get("arguments", item.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    if name not in names:
        invalid.append(_invalid(name, json.dumps(args, ensure_ascii=False), f"no bound tool is named {name!r}"))
    elif not isinstance(args, dict):
        invalid.append(_invalid(name, raw, "the arguments must be a JSON object"))
    else:
        calls.append(ToolCall(name=name, args=args, id=new_call_id(), type="tool_call"))


def _invalid(name: str | None, args: str, error: str) -> InvalidToolCall:
    return InvalidToolCall(name=name, args=args, id=new_call_id(), error=error, type="invalid_tool_call")

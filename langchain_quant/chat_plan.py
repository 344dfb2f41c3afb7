"""One ChatQuant call's plan: from the messages and the bound ``tools``/``tool_choice``/``response_format``
to the prompt text, the constraint on the reply, and how the reply text becomes an AIMessage.

``response_format`` follows OpenAI's spelling, as ``with_structured_output`` binds it:
``{"type": "json_schema", "json_schema": {"schema": {...}}}`` (the reply is a JSON value of that schema; the
schema is also shown to the model in the system turn) or ``{"type": "json_object"}`` (any JSON object;
the prompt should ask for JSON, as with hosted models).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage, ToolCallChunk

from quant_core.constrained import Constraint
from quant_core.errors import ConfigError

from .messages import to_chat_dicts
from .tools import (BUILTIN, OPEN, TEMPLATE, ToolFormat, builtin_tool_prompt, normalize_tool_choice,
                    parse_tool_calls, reply_schema, tool_call_constraint, tool_specs)

CALL_KEYS = ("tools", "tool_choice", "parallel_tool_calls", "response_format")


@dataclass
class ChatPlan:
    prompt: str
    constraint: Constraint | None = None
    tool_names: list[str] = field(default_factory=list)  # empty: replies are plain text

    def message(self, text: str, **fields: Any) -> AIMessage:
        if not self.tool_names:
            return AIMessage(content=text, **fields)
        content, calls, invalid = parse_tool_calls(text, self.tool_names)
        return AIMessage(content=content, tool_calls=calls, invalid_tool_calls=invalid, **fields)


def plan_call(engine, messages: list[BaseMessage], call: dict[str, Any], chat_template: str | None,
              tool_format: ToolFormat, max_string_chars: int | None = None) -> ChatPlan:
    """``call``: the CALL_KEYS popped from a call's keyword arguments (each may be missing);
    ``max_string_chars``: the bound on free strings in a constrained reply (``tools.reply_schema``)."""
    specs = tool_specs(call["tools"]) if call.get("tools") else []
    names = [s["function"]["name"] for s in specs]
    choice = normalize_tool_choice(call.get("tool_choice"), names) if specs else "none"
    response_format = call.get("response_format")
    if response_format is not None and choice != "none":
        raise ConfigError("a call cannot both bind tools and ask for a response_format: use one of them")
    if choice == "none":
        specs, names = [], []
    system_text, constraint = _response_format(response_format, max_string_chars)
    if specs and tool_format is BUILTIN:
        system_text = builtin_tool_prompt(specs)
    if specs:
        parallel = call.get("parallel_tool_calls")
        constraint = tool_call_constraint(specs, choice, tool_format, parallel is not False, max_string_chars)
    if system_text:
        messages = _with_system_text(messages, system_text)
    dicts = to_chat_dicts(messages, tool_format)
    prompt = engine.render_chat(dicts, chat_template=chat_template,
                                tools=specs if tool_format is TEMPLATE else None)
    return ChatPlan(prompt, constraint, names)


def _response_format(response_format, max_string_chars: int | None) -> tuple[str | None, Constraint | None]:
    if response_format is None:
        return None, None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return None, Constraint.json_schema(any_object(max_string_chars))
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise ConfigError("response_format json_schema needs {'json_schema': {'schema': {...}}}")
        hint = f"Reply with one JSON object that follows this JSON schema: {json.dumps(schema, ensure_ascii=False)}"
        return hint, Constraint.json_schema(reply_schema(schema, max_string_chars))
    raise ConfigError(f"response_format must be {{'type': 'json_schema', ...}} or {{'type': 'json_object'}}; "
                      f"got {response_format!r}")


def any_object(max_string_chars: int | None) -> dict:
    """A JSON schema of any JSON object, its string values at most ``max_string_chars`` long."""
    if max_string_chars is None:
        return {"type": "object"}
    value = {"anyOf": [{"type": "string", "maxLength": max_string_chars}, {"type": ["number", "boolean", "null"]},
                       {"type": "array", "items": {"$ref": "#/$defs/value"}},
                       {"type": "object", "additionalProperties": {"$ref": "#/$defs/value"}}]}
    return {"$defs": {"value": value}, "type": "object", "additionalProperties": {"$ref": "#/$defs/value"}}


def _with_system_text(messages: list[BaseMessage], text: str) -> list[BaseMessage]:
    """The messages with ``text`` added to the first system turn (or in a new first one)."""
    if messages and isinstance(messages[0], SystemMessage) and isinstance(messages[0].content, str):
        return [SystemMessage(f"{messages[0].content}\n\n{text}"), *messages[1:]]
    return [SystemMessage(text), *messages]


def has_tool_turns(messages: list[BaseMessage]) -> bool:
    return any(m.type == "tool" or getattr(m, "tool_calls", None) for m in messages)


class ToolCallStream:
    """Streams a reply's text while it cannot be a tool call; from the first ``<tool_call>`` on, holds the
    rest back and, at the end, turns it into tool-call chunks (content outside the calls included)."""

    def __init__(self, names: list[str]):
        self.names, self.sent, self.held = names, "", False

    def feed(self, text: str) -> str:
        """The full text so far -> the delta that can be shown now."""
        if self.held:
            return ""
        at = text.find(OPEN)
        if at >= 0:
            self.held = True
            safe = text[:at]
        else:
            safe = text[:len(text) - _possible_start(text)]
        delta, self.sent = safe[len(self.sent):], max(self.sent, safe, key=len)
        return delta

    def finish(self, text: str) -> AIMessageChunk:
        """The last chunk: text not yet sent, and one tool-call chunk per parsed call (valid or not)."""
        rest = text[len(self.sent):]
        content, calls, invalid = parse_tool_calls(rest, self.names)
        chunks = [ToolCallChunk(name=c["name"], args=json.dumps(c["args"], ensure_ascii=False), id=c["id"],
                                index=i) for i, c in enumerate(calls)]
        chunks += [ToolCallChunk(name=c["name"], args=c["args"], id=c["id"], index=len(calls) + i)
                   for i, c in enumerate(invalid)]
        if calls or invalid:
            content = ("\n" if self.sent and content else "") + content
        return AIMessageChunk(content=content, tool_call_chunks=chunks)


def _possible_start(text: str) -> int:
    """Length of the longest end of ``text`` that could begin ``<tool_call>``."""
    for k in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:k]):
            return k
    return 0

"""LangChain messages -> the ``[{"role": ..., "content": ...}]`` dicts a chat template renders.

With tools rendered by the template (``TEMPLATE`` format), earlier tool calls and tool results are passed in
the form Hugging Face templates read (``tool_calls`` on assistant turns, ``role: "tool"`` turns). Without
(``BUILTIN``), a call is written back as the text the model would have produced, and results go in a user
turn wrapped in ``<tool_response>`` tags (consecutive results share one turn), so templates that only know
system/user/assistant, or insist that user and assistant alternate, still render them.
"""
from __future__ import annotations

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from quant_core.errors import ConfigError

from .tools import BUILTIN, ToolFormat, format_calls

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}
_TEXT_BLOCKS = ("text",)
_SKIPPED_BLOCKS = ("tool_use", "tool_call", "function_call")  # the message's tool_calls say the same


def to_chat_dicts(messages: list[BaseMessage], fmt: ToolFormat = BUILTIN) -> list[dict]:
    out: list[dict] = []
    for message in messages:
        if isinstance(message, ToolMessage) or message.type == "function":
            _add_tool_result(out, message, fmt)
        elif isinstance(message, AIMessage) and message.tool_calls:
            _add_tool_calls(out, message, fmt)
        else:
            out.append({"role": _role(message), "content": text_of(message)})
    return [{k: v for k, v in d.items() if k != "tool_results"} for d in out]


def _role(message: BaseMessage) -> str:
    role = getattr(message, "role", None) or _ROLES.get(message.type)
    if role is None:
        raise ConfigError(f"message type {message.type!r} has no chat role; use system, human, ai or tool messages")
    return role


def _add_tool_calls(out: list[dict], message: AIMessage, fmt: ToolFormat) -> None:
    text = text_of(message)
    if fmt is BUILTIN:
        written = format_calls(message.tool_calls, fmt)
        out.append({"role": "assistant", "content": f"{text}\n{written}" if text else written})
        return
    calls = [{"type": "function", "id": c.get("id"), "function": {"name": c["name"], "arguments": c.get("args") or {}}}
             for c in message.tool_calls]
    out.append({"role": "assistant", "content": text, "tool_calls": calls})


def _add_tool_result(out: list[dict], message: BaseMessage, fmt: ToolFormat) -> None:
    text = text_of(message)
    if getattr(message, "status", "success") == "error" and not text.lower().startswith("error"):
        text = f"Error: {text}"
    if fmt is not BUILTIN:
        out.append({"role": "tool", "content": text, "tool_call_id": getattr(message, "tool_call_id", None),
                    "name": getattr(message, "name", None)})
        return
    wrapped = f"<tool_response>\n{text}\n</tool_response>"
    if out and out[-1].get("tool_results"):  # one user turn for consecutive results
        out[-1]["content"] += "\n" + wrapped
    else:
        out.append({"role": "user", "content": wrapped, "tool_results": True})


def text_of(message: BaseMessage) -> str:
    """A message's text; non-text blocks (images, audio, files) are refused, tool-use blocks skipped."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") in _TEXT_BLOCKS:
            parts.append(block.get("text", ""))
        elif isinstance(block, dict) and block.get("type") in _SKIPPED_BLOCKS:
            continue
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ConfigError(f"ChatQuant handles text only; a message holds a {kind!r} block "
                              f"(images, audio and files are not supported)")
    return "".join(parts)

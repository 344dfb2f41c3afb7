"""How QuantLlamaLLM turns a completion prompt or chat messages into the text the model reads,
with HuggingFaceLLM's settings and their meaning:

* ``complete(prompt)`` (not ``formatted``): ``query_wrapper_prompt`` wraps the prompt, then a
  ``completion_to_prompt`` the user gave formats it; without one, an instruct model's chat template
  does (the prompt as the user's turn, ``system_prompt`` as the system turn), so an instruct model
  answers instead of continuing the text; with neither, ``system_prompt`` is put in front, as
  HuggingFaceLLM does.
* ``chat(messages)``: a ``messages_to_prompt`` the user gave, else the chat template, else
  LlamaIndex's generic format; ``system_prompt`` becomes the first message when there is none.
"""
from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.llms.llm import default_completion_to_prompt, generic_messages_to_prompt

# LlamaIndex roles that chat templates know under another name.
ROLE_NAMES = {MessageRole.CHATBOT: "assistant", MessageRole.MODEL: "assistant", MessageRole.DEVELOPER: "system"}


def user_gave(function, default) -> bool:
    """LlamaIndex fills an unset ``completion_to_prompt`` / ``messages_to_prompt`` with its default."""
    return function is not None and function is not default


def completion_prompt(llm, prompt: str) -> str:
    if llm.query_wrapper_prompt is not None:
        prompt = llm.query_wrapper_prompt.format(query_str=prompt)
    if user_gave(llm.completion_to_prompt, default_completion_to_prompt):
        return llm.completion_to_prompt(prompt)
    if llm.uses_chat_template:
        return chat_prompt(llm, [ChatMessage(role=MessageRole.USER, content=prompt)])
    return f"{llm.system_prompt} {prompt}" if llm.system_prompt else prompt


def chat_prompt(llm, messages: Sequence[ChatMessage]) -> str:
    messages = list(messages)
    if llm.system_prompt and not any(m.role == MessageRole.SYSTEM for m in messages):
        messages.insert(0, ChatMessage(role=MessageRole.SYSTEM, content=llm.system_prompt))
    if user_gave(llm.messages_to_prompt, generic_messages_to_prompt):
        return llm.messages_to_prompt(messages)
    if llm.uses_chat_template:
        return llm.engine.render_chat([{"role": ROLE_NAMES.get(m.role, m.role.value), "content": m.content or ""}
                                       for m in messages])
    return generic_messages_to_prompt(messages)

"""A tool call's round trip: the reply the model wrote, parsed into AIMessage.tool_calls, then sent back in the
history with its ToolMessage result, renders as the very text the model wrote (built-in format and a tool-aware
template), and the results land where the template puts tool responses. Tiny random model: every call below
comes from the grammar mask; the checks are on formats, not on what a call says."""
from typing import Literal

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import BaseModel

from langchain_quant import ChatQuant, QuantLLM
from langchain_quant.tools import BUILTIN, TEMPLATE
from quant_core.engine import GenerationEngine
from quant_core.testing import CHATML_TEMPLATE, byte_tokenizer, tiny_llama_lm

pytest.importorskip("llguidance")

# Shaped like Qwen2.5's template: tools in the system turn, calls as one JSON object per <tool_call> block,
# results of role "tool" in a user turn inside <tool_response> tags.
QWEN_LIKE_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t.function | tojson }}{% endfor %}</tools>"
    "<|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- elif m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n{{ m.content }}"
    "{%- for c in m.tool_calls %}{% if not loop.first or m.content %}\n{% endif %}<tool_call>\n"
    "{{ '{\"name\": \"' + c.function.name + '\", \"arguments\": ' + (c.function.arguments | tojson) + '}' }}"
    "\n</tool_call>{% endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class Pick(BaseModel):
    """Pick a colour."""
    colour: Literal["red", "blue"]


class Toss(BaseModel):
    """Toss a coin."""
    heads: bool


@pytest.fixture(scope="module")
def engine():
    model = tiny_llama_lm()
    model.config.max_position_embeddings = 4096  # the built-in tool prompt is ~700 byte tokens
    return GenerationEngine(model, byte_tokenizer(CHATML_TEMPLATE))


def raw_reply(chat: ChatQuant, messages, call: dict) -> str:
    """The text the model writes for ``messages`` under ``call`` (greedy: the same as ``invoke`` gets)."""
    plan = chat._plan(messages, dict(call))
    return chat.get_engine().generate([plan.prompt], chat._defaults(), [plan.constraint])[0].text


@pytest.mark.parametrize("template, fmt", [(None, BUILTIN), (QWEN_LIKE_TEMPLATE, TEMPLATE)])
def test_a_call_and_its_result_go_back_as_the_model_wrote_them(engine, template, fmt):
    chat = ChatQuant(llm=QuantLLM(engine=engine), chat_template=template, max_tokens=80)
    assert chat.tool_format() is fmt
    bound = chat.bind_tools([Pick, Toss], tool_choice="any", parallel_tool_calls=False)  # a random model ends one call
    question = [HumanMessage("Choose.")]
    reply = bound.invoke(question)
    assert reply.tool_calls and not reply.invalid_tool_calls
    written = raw_reply(chat, question, bound.kwargs)
    results = [ToolMessage(f"result {i}", tool_call_id=c["id"]) for i, c in enumerate(reply.tool_calls)]
    history = [*question, reply, *results]
    prompt = chat.render(history, **bound.kwargs)
    assert written.strip() in prompt  # the call goes back verbatim
    for i in range(len(results)):
        assert f"<tool_response>\nresult {i}\n</tool_response>" in prompt
    assert prompt.index(written.strip()) < prompt.index("<tool_response>\nresult 0")
    follow_up = bound.invoke(history)  # and the model can go on from there
    assert isinstance(follow_up, AIMessage) and follow_up.tool_calls


def test_a_template_that_renders_tools_shows_them_once_and_no_builtin_prompt(engine):
    chat = ChatQuant(llm=QuantLLM(engine=engine), chat_template=QWEN_LIKE_TEMPLATE)
    prompt = chat.render([HumanMessage("Choose.")], tools=[Pick, Toss])
    assert prompt.count('"name": "Pick"') == 1 and "You can call functions" not in prompt

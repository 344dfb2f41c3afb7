"""ChatQuant on tiny random models, and langchain-tests' ChatModelUnitTests (no model is loaded)."""
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_quant import ChatQuant, QuantLLM
from quant_core.engine import GenerationEngine, GenerationParams
from quant_core.testing import CHATML_TEMPLATE, byte_tokenizer, tiny_llama_lm

class TestChatQuantStandardUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self):
        return ChatQuant

    @property
    def chat_model_params(self):
        return {"model": "path/loaded/on/first/call"}  # construction is lazy: nothing is loaded here

    @property
    def has_tool_calling(self):
        return True

    @property
    def has_structured_output(self):
        return True


@pytest.fixture(scope="module")
def engine():
    return GenerationEngine(tiny_llama_lm(), byte_tokenizer(CHATML_TEMPLATE))


@pytest.fixture
def chat(engine):
    return ChatQuant(llm=QuantLLM(engine=engine), max_tokens=6)


MESSAGES = [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello"), HumanMessage("Why?")]


def test_messages_go_through_the_chat_template(chat, engine):
    prompt = chat.render(MESSAGES)
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                      "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    expected = engine.generate([prompt], GenerationParams(max_new_tokens=6))[0]
    reply = chat.invoke(MESSAGES)
    assert reply.content == expected.text
    assert reply.usage_metadata == {"input_tokens": expected.prompt_tokens, "output_tokens": 6, "total_tokens":
                                    expected.prompt_tokens + 6}
    assert reply.response_metadata["finish_reason"] == "length"


def test_stream_ends_with_usage_and_last_chunk(chat):
    chunks = list(chat.stream(MESSAGES))
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.content == chat.invoke(MESSAGES).content
    assert chunks[-1].chunk_position == "last" and full.usage_metadata["output_tokens"] == 6


def test_bind_stop_cuts_the_reply(chat):
    full = chat.invoke(MESSAGES).content
    stop = next(full[i:i + 2] for i in range(1, len(full) - 1) if full.find(full[i:i + 2]) == i)
    reply = chat.bind(stop=[stop]).invoke(MESSAGES)
    assert reply.content == full[:full.index(stop)] and reply.response_metadata["finish_reason"] == "stop"


def test_missing_chat_template_is_a_clear_error_and_a_given_one_works():
    llm = QuantLLM(engine=GenerationEngine(tiny_llama_lm(), byte_tokenizer()))
    with pytest.raises(ValueError, match="no chat template"):
        ChatQuant(llm=llm).invoke("hi")
    templated = ChatQuant(llm=llm, chat_template=CHATML_TEMPLATE, max_tokens=3)
    reply = templated.invoke("hi")
    assert reply.usage_metadata["output_tokens"] == 3
    assert templated.get_engine() is llm.get_engine()  # its own template, not its own engine (and lock)
    assert templated.render([HumanMessage("hi")]).startswith("<|im_start|>user")
    with pytest.raises(ValueError, match="no chat template"):  # the shared engine kept no template
        ChatQuant(llm=llm).invoke("hi")


def test_non_text_content_is_refused(chat):
    image = HumanMessage(content=[{"type": "text", "text": "what is this?"},
                                  {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
    with pytest.raises(ValueError, match="text only"):
        chat.invoke([image])


def test_bad_settings_fail_at_construction():
    with pytest.raises(ValueError):
        ChatQuant(temperature=-1)
    with pytest.raises(ValueError):
        ChatQuant(quantization_config={"weight_dtype": "int5"})
    with pytest.raises(ValueError):
        ChatQuant(modle="typo")

"""No network call at run time unless the user names a hub model: with every socket connection
made to raise, loading local models, generating and counting tokens in both wrappers work. (LangChain's
default get_num_tokens fetched GPT-2's tokenizer from the hub: minutes of retries offline, then 0.)"""
import socket

import pytest

from quant_core.testing import byte_tokenizer, tiny_llama_lm


class NetworkCall(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise NetworkCall(f"a network connection was attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-offline")
    tiny_llama_lm().save_pretrained(path)
    tokenizer = byte_tokenizer(chat_template="{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    tokenizer.save_pretrained(path)
    return path


def own_count(text: str) -> int:
    return len(byte_tokenizer()(text, add_special_tokens=False)["input_ids"])


def test_langchain_llm_counts_with_the_models_tokenizer(no_network, tiny_dir):
    from langchain_quant import QuantLLM
    llm = QuantLLM.from_model_id(str(tiny_dir), quantization_config={"weight_dtype": "int4", "group_size": 32},
                                 pipeline_kwargs={"max_new_tokens": 2})
    assert llm.get_num_tokens("hello world") == own_count("hello world") == 11
    assert llm.get_token_ids("hi") == byte_tokenizer()("hi", add_special_tokens=False)["input_ids"]
    assert isinstance(llm.invoke("hello"), str)


def test_langchain_chat_model_counts_the_rendered_prompt(no_network, tiny_dir):
    from langchain_core.messages import HumanMessage, SystemMessage

    from langchain_quant import ChatQuant
    chat = ChatQuant(model=str(tiny_dir), max_tokens=2)
    messages = [SystemMessage("be brief"), HumanMessage("hello")]
    assert chat.get_num_tokens("hello") == 5
    rendered = "<system>be brief<user>hello"
    assert chat.get_num_tokens_from_messages(messages) == own_count(rendered)
    reply = chat.invoke(messages)
    assert reply.usage_metadata["input_tokens"] == chat.get_num_tokens_from_messages(messages)


def test_llamaindex_counts_with_the_models_tokenizer(no_network, tiny_dir):
    pytest.importorskip("llama_index.core", reason="needs the llamaindex extra")
    from llamaindex_quant import QuantLlamaLLM
    llm = QuantLlamaLLM(str(tiny_dir), max_new_tokens=2)
    assert llm.get_num_tokens("hello world") == own_count("hello world")
    assert llm.complete("hello").additional_kwargs["completion_tokens"] >= 1


def test_a_hub_id_is_the_one_place_the_network_is_asked(no_network, monkeypatch):
    from quant_core.auto import check_source
    from quant_core.errors import SourceNotFoundError
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(SourceNotFoundError, match="neither a local path nor reachable"):
        check_source("some-org/some-model-that-is-not-cached")


@pytest.mark.slow
def test_the_embedded_model_loads_and_answers_offline(no_network):
    from quant_core.auto import engine_for_source
    from quant_core.engine import GenerationParams
    engine = engine_for_source(None)
    prompt = engine.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in engine.generate([prompt], GenerationParams(max_new_tokens=8))[0].text

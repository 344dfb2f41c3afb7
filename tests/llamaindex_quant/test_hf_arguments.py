"""Every argument HuggingFaceLLM takes is honoured by QuantLlamaLLM with its meaning, or refused by
name: never dropped silently. The list of arguments is read from llama-index-llms-huggingface when it
is installed (its constructor's parameters and pydantic fields), else from the copy below."""
import inspect

import pytest
import torch

pytest.importorskip("llama_index.core", reason="needs the llamaindex extra: pip install '.[llamaindex]'")

from llama_index.core.base.llms.types import ChatMessage, MessageRole  # noqa: E402
from llama_index.core.callbacks import CallbackManager  # noqa: E402
from llama_index.core.prompts import PromptTemplate  # noqa: E402
from llama_index.core.types import BaseOutputParser, PydanticProgramMode  # noqa: E402

from llamaindex_quant import QuantLlamaLLM  # noqa: E402
from quant_core.errors import ConfigError, UnknownSettingError  # noqa: E402

# llama-index-llms-huggingface 0.8.0: HuggingFaceLLM.__init__'s parameters, then its pydantic fields.
HF_LLM_ARGUMENTS_0_8_0 = (
    "context_window", "max_new_tokens", "query_wrapper_prompt", "tokenizer_name", "model_name", "model",
    "tokenizer", "device_map", "stopping_ids", "tokenizer_kwargs", "tokenizer_outputs_to_remove", "model_kwargs",
    "generate_kwargs", "is_chat_model", "callback_manager", "system_prompt", "messages_to_prompt",
    "completion_to_prompt", "pydantic_program_mode", "output_parser", "rate_limiter")
PROMPT = "the quick brown fox"


def anchor_arguments() -> set[str]:
    try:
        from llama_index.llms.huggingface import HuggingFaceLLM
    except ImportError:
        return set(HF_LLM_ARGUMENTS_0_8_0)
    names = set(inspect.signature(HuggingFaceLLM.__init__).parameters) - {"self"}
    return names | set(HuggingFaceLLM.model_fields)


@pytest.fixture(scope="module")
def tiny_dir(tiny_pair, tmp_path_factory):
    model, tokenizer = tiny_pair
    path = tmp_path_factory.mktemp("tiny-hf")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class Upper(BaseOutputParser):
    def parse(self, output: str):
        return "PARSED:" + output

    def format(self, query: str) -> str:
        return query


def first_token(llm) -> int:
    """The first token greedy decoding produces for PROMPT (to stop on it)."""
    ids = llm.engine.tokenizer(llm.render_completion(PROMPT), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return int(llm.engine.model(**ids).logits[0, -1].argmax())


# Each check builds a QuantLlamaLLM with the argument and shows its effect (or the refusal by name).
def check_context_window(pair, tiny_dir):
    assert QuantLlamaLLM.from_model(*pair, context_window=64).metadata.context_window == 64
    assert QuantLlamaLLM.from_model(*pair, context_window=4096).metadata.context_window == 128  # the model's


def check_max_new_tokens(pair, tiny_dir):
    llm = QuantLlamaLLM.from_model(*pair, max_new_tokens=2)
    assert llm.metadata.num_output == 2 and llm.complete(PROMPT).additional_kwargs["completion_tokens"] <= 2


def check_query_wrapper_prompt(pair, tiny_dir):
    for wrapper in ("Q: {query_str} A:", PromptTemplate("Q: {query_str} A:")):
        llm = QuantLlamaLLM.from_model(*pair, query_wrapper_prompt=wrapper)
        assert "<|user|>Q: the quick brown fox A:</s>" in llm.render_completion(PROMPT)


def check_tokenizer_name(pair, tiny_dir):
    from transformers import AutoTokenizer
    other = AutoTokenizer.from_pretrained(tiny_dir)
    other.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    other_dir = tiny_dir.parent / (tiny_dir.name + "-other-tokenizer")
    other.save_pretrained(other_dir)
    llm = QuantLlamaLLM.from_model(pair[0], None, tokenizer_name=str(other_dir))
    assert llm.render_completion(PROMPT) == "[the quick brown fox]"
    assert QuantLlamaLLM(str(tiny_dir), tokenizer_name=str(other_dir)).render_completion("x") == "[x]"


def check_model_name(pair, tiny_dir):
    llm = QuantLlamaLLM(model_name=str(tiny_dir))  # loads it, as HuggingFaceLLM(model_name=...) does
    assert llm.engine.model.config.vocab_size == pair[0].config.vocab_size
    assert llm.metadata.model_name == str(tiny_dir)
    named = QuantLlamaLLM.from_model(*pair, model_name="my-model")  # with a model given: only its name
    assert named.engine.model is pair[0] and named.metadata.model_name == "my-model"


def check_model(pair, tiny_dir):
    assert QuantLlamaLLM(pair[0], tokenizer=pair[1]).engine.model is pair[0]


def check_tokenizer(pair, tiny_dir):
    assert QuantLlamaLLM(pair[0], tokenizer=pair[1]).engine.tokenizer is pair[1]


def check_device_map(pair, tiny_dir):
    for device_map in ("auto", "cpu", {"": "cpu"}, {"model": "cpu", "lm_head": "cpu"}):
        llm = QuantLlamaLLM(str(tiny_dir), device_map=device_map)
        assert next(llm.engine.model.parameters()).device.type == "cpu"
    with pytest.raises(ConfigError, match="device_map spreads the model over.*tensor parallelism"):
        QuantLlamaLLM(str(tiny_dir), device_map={"model": "cpu", "lm_head": 0})
    with pytest.raises(ConfigError, match="device_map places modules on 'disk'"):
        QuantLlamaLLM(str(tiny_dir), device_map={"model": "cpu", "lm_head": "disk"})
    with pytest.raises(ConfigError, match="device_map apply when QuantLlamaLLM loads the model"):
        QuantLlamaLLM.from_model(*pair, device_map="cpu")


def check_stopping_ids(pair, tiny_dir):
    llm = QuantLlamaLLM.from_model(*pair, max_new_tokens=5)
    stop = first_token(llm)
    stopped = QuantLlamaLLM.from_model(*pair, max_new_tokens=5, stopping_ids=[stop]).complete(PROMPT)
    assert stopped.text == "" and stopped.additional_kwargs["completion_tokens"] == 1
    with pytest.raises(TypeError, match="stop_token_ids"):
        QuantLlamaLLM.from_model(*pair, stopping_ids=["</s>"])


def check_tokenizer_kwargs(pair, tiny_dir):
    llm = QuantLlamaLLM.from_model(*pair, tokenizer_kwargs={"model_max_length": 77})
    assert llm.engine.tokenizer.model_max_length == 77 and pair[1].model_max_length != 77
    assert QuantLlamaLLM(str(tiny_dir), tokenizer_kwargs={"model_max_length": 33}).engine.tokenizer.model_max_length == 33


def check_tokenizer_outputs_to_remove(pair, tiny_dir):
    llm = QuantLlamaLLM.from_model(*pair, tokenizer_outputs_to_remove=["token_type_ids"])
    assert llm.tokenizer_outputs_to_remove == ["token_type_ids"]  # never passed to the model anyway
    with pytest.raises(ConfigError, match=r"tokenizer_outputs_to_remove names \['input_ids'\]"):
        QuantLlamaLLM.from_model(*pair, tokenizer_outputs_to_remove=["input_ids"])


def check_model_kwargs(pair, tiny_dir):
    llm = QuantLlamaLLM(str(tiny_dir), model_kwargs={"attn_implementation": "eager", "dtype": "bfloat16"})
    assert llm.engine.model.config._attn_implementation == "eager"
    assert next(llm.engine.model.parameters()).dtype.is_floating_point
    assert str(next(llm.engine.model.parameters()).dtype) == "torch.bfloat16"
    with pytest.raises(ConfigError, match="model_kwargs apply when QuantLlamaLLM loads the model"):
        QuantLlamaLLM.from_model(*pair, model_kwargs={"revision": "main"})
    with pytest.raises(ConfigError, match=r"model_kwargs\['quantization_config'\] is not used: pass quantization_config"):
        QuantLlamaLLM(str(tiny_dir), model_kwargs={"quantization_config": {}})


def check_generate_kwargs(pair, tiny_dir):
    llm = QuantLlamaLLM.from_model(*pair, generate_kwargs={"do_sample": True, "top_k": 3, "eos_token_id": 9})
    params = llm._params({})
    assert (params.temperature, params.top_k, params.stop_token_ids) == (1.0, 3, [9])
    with pytest.raises(ConfigError, match="num_return_sequences=2 is not honoured here"):
        QuantLlamaLLM.from_model(*pair, generate_kwargs={"num_return_sequences": 2, "do_sample": True})
    with pytest.raises(UnknownSettingError, match="num_beams"):
        QuantLlamaLLM.from_model(*pair, generate_kwargs={"num_beams": 2})


def check_is_chat_model(pair, tiny_dir):
    assert QuantLlamaLLM.from_model(*pair).metadata.is_chat_model is True  # None: the chat template is used
    assert QuantLlamaLLM.from_model(*pair, is_chat_model=False).metadata.is_chat_model is False


def check_callback_manager(pair, tiny_dir):
    manager = CallbackManager([])
    assert QuantLlamaLLM.from_model(*pair, callback_manager=manager).callback_manager is manager


def check_system_prompt(pair, tiny_dir):
    llm = QuantLlamaLLM.from_model(*pair, system_prompt="be brief")
    assert llm.render_completion(PROMPT) == "<s><|system|>be brief</s><|user|>the quick brown fox</s><|assistant|>"
    chat = llm.render_messages([ChatMessage(role=MessageRole.USER, content="hi")])
    assert chat == "<s><|system|>be brief</s><|user|>hi</s><|assistant|>"


def check_messages_to_prompt(pair, tiny_dir):
    llm = QuantLlamaLLM.from_model(*pair, messages_to_prompt=lambda ms: "|".join(m.content for m in ms))
    assert llm.render_messages([ChatMessage(role=MessageRole.USER, content="a"),
                                ChatMessage(role=MessageRole.ASSISTANT, content="b")]) == "a|b"


def check_completion_to_prompt(pair, tiny_dir):
    llm = QuantLlamaLLM.from_model(*pair, completion_to_prompt=lambda p: f"<<{p}>>")
    assert llm.render_completion(PROMPT) == "<<the quick brown fox>>"


def check_pydantic_program_mode(pair, tiny_dir):
    llm = QuantLlamaLLM.from_model(*pair, pydantic_program_mode=PydanticProgramMode.LLM)
    assert llm.pydantic_program_mode == PydanticProgramMode.LLM  # read by LlamaIndex's structured_predict


def check_output_parser(pair, tiny_dir):
    llm = QuantLlamaLLM.from_model(*pair, output_parser=Upper(), max_new_tokens=2)
    assert llm.predict(PromptTemplate("{x}"), x="the lazy dog").startswith("PARSED:")


def check_rate_limiter(pair, tiny_dir):
    class Counting:
        calls = 0

        def acquire(self):
            Counting.calls += 1

    llm = QuantLlamaLLM.from_model(*pair, rate_limiter=Counting(), max_new_tokens=1)
    llm.complete(PROMPT)
    assert Counting.calls == 1  # LlamaIndex's call decorators ask it before every call


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def test_every_anchor_argument_has_a_check():
    missing = sorted(anchor_arguments() - set(CHECKS))
    assert not missing, f"HuggingFaceLLM arguments with no honoured-or-refused check: {missing}"


def test_the_copied_list_matches_the_installed_anchor():
    pytest.importorskip("llama_index.llms.huggingface", reason="llama-index-llms-huggingface is not installed")
    assert set(HF_LLM_ARGUMENTS_0_8_0) <= anchor_arguments()


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_argument_is_honoured_or_refused_by_name(name, tiny_pair, tiny_dir):
    CHECKS[name](tiny_pair, tiny_dir)


def test_an_unknown_argument_is_refused_by_name(tiny_pair):
    with pytest.raises(UnknownSettingError, match=r"unknown argument\(s\) \['context_windw'\]"):
        QuantLlamaLLM.from_model(*tiny_pair, context_windw=512)


@pytest.mark.slow
def test_complete_on_the_instruct_model_answers(smollm2):
    """The issue's case: complete() on SmolLM2-135M-Instruct returned '' (no chat template applied)."""
    import copy
    model, tokenizer = smollm2
    llm = QuantLlamaLLM.from_model(copy.deepcopy(model), tokenizer, max_new_tokens=12)
    assert "Paris" in llm.complete("What is the capital of France?").text

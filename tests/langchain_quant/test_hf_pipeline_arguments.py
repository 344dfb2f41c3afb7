"""Every argument of langchain-huggingface's HuggingFacePipeline.from_model_id (and its fields, its
per-call switches and the pipeline_kwargs users pass) is honoured by QuantLLM with its meaning, or
refused by name: never dropped silently. The list is read from langchain-huggingface when it is
installed, else from the copy below."""
import inspect

import pytest
import torch
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler

from langchain_quant import ChatQuant, QuantLLM
from quant_core.engine import GenerationEngine, GenerationParams
from quant_core.errors import ConfigError
from quant_core.testing import byte_tokenizer, tiny_llama_lm, tiny_t5

# langchain-huggingface 1.2.3: from_model_id's parameters, then HuggingFacePipeline's pydantic fields.
FROM_MODEL_ID_1_2_3 = ("model_id", "task", "backend", "device", "device_map", "model_kwargs", "pipeline_kwargs",
                       "batch_size", "kwargs")
FIELDS_1_2_3 = ("name", "cache", "verbose", "callbacks", "tags", "metadata", "custom_get_token_ids", "pipeline",
                "model_id", "model_kwargs", "pipeline_kwargs", "batch_size")
# What users put in pipeline_kwargs (transformers' text-generation pipeline and generate()) and pass per call.
PIPELINE_KWARGS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty",
                   "num_return_sequences", "return_full_text", "eos_token_id", "pad_token_id", "skip_prompt")
PROMPT = "the quick brown fox"


def anchor_arguments() -> set[str]:
    try:
        from langchain_huggingface.llms.huggingface_pipeline import HuggingFacePipeline
    except ImportError:
        names = set(FROM_MODEL_ID_1_2_3) | set(FIELDS_1_2_3)
    else:
        names = set(inspect.signature(HuggingFacePipeline.from_model_id).parameters) - {"cls"}
        names |= set(HuggingFacePipeline.model_fields)
    return names | set(PIPELINE_KWARGS)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-lc")
    tiny_llama_lm().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine():
    return GenerationEngine(tiny_llama_lm(), byte_tokenizer())


def llm_on(engine, **kwargs):
    return QuantLLM(engine=engine, **{"pipeline_kwargs": {"max_new_tokens": 4}, **kwargs})


def check_model_id(engine, tiny_dir):
    assert QuantLLM.from_model_id(str(tiny_dir)).get_engine().model.config.vocab_size == 259


def check_task(engine, tiny_dir):
    assert QuantLLM.from_model_id(str(tiny_dir), task="text-generation").task == "text-generation"
    with pytest.raises(ConfigError, match="unknown task 'fill-mask'; valid tasks"):
        QuantLLM.from_model_id(str(tiny_dir), task="fill-mask")


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A tiny T5 whose config names its task prefixes, as T5's own config does."""
    path = tmp_path_factory.mktemp("tiny-t5-tasks")
    model = tiny_t5()
    model.config.task_specific_params = {"summarization": {"prefix": "summarize: "},
                                         "translation_en_to_de": {"prefix": "translate English to German: "}}
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("task, prefix", [("summarization", "summarize: "),
                                          ("translation_en_to_de", "translate English to German: "),
                                          ("translation", ""), ("text2text-generation", "")])
def test_summarization_and_translation_run_with_the_models_task_prefix(t5_dir, task, prefix):
    """langchain-huggingface's tasks: the seq2seq model with the prefix its pipelines put before the input."""
    llm = QuantLLM.from_model_id(str(t5_dir), task=task, pipeline_kwargs={"max_new_tokens": 3})
    result = llm.generate(["hello world"])
    assert result.llm_output["token_usage"]["prompt_tokens"] == len(prefix + "hello world")
    expected = llm.get_engine().generate([prefix + "hello world"], GenerationParams(max_new_tokens=3))[0].text
    assert result.generations[0][0].text == expected == "".join(llm.stream("hello world"))
    with pytest.raises(ConfigError, match="return_full_text is for text-generation models"):
        llm.invoke("hello", return_full_text=True)


def check_backend(engine, tiny_dir):
    assert QuantLLM.from_model_id(str(tiny_dir), backend="ipex").get_engine() is not None
    with pytest.raises(ConfigError, match="backend='openvino' is not available"):
        QuantLLM.from_model_id(str(tiny_dir), backend="openvino")


def check_device(engine, tiny_dir):
    assert QuantLLM.from_model_id(str(tiny_dir), device=-1).device == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            QuantLLM.from_model_id(str(tiny_dir), device=0)


def check_device_map(engine, tiny_dir):
    for device_map in ("auto", "cpu", {"": "cpu"}):
        llm = QuantLLM.from_model_id(str(tiny_dir), device_map=device_map)
        assert next(llm.get_engine().model.parameters()).device.type == "cpu"
    with pytest.raises(ConfigError, match="device_map spreads the model over"):
        QuantLLM.from_model_id(str(tiny_dir), device_map={"model": "cpu", "lm_head": 0})
    with pytest.raises(ConfigError, match="device_map is given both as an argument and in model_kwargs"):
        QuantLLM.from_model_id(str(tiny_dir), device_map="cpu", model_kwargs={"device_map": "cpu"})
    chat = ChatQuant(model=str(tiny_dir), device_map={"": "cpu"})
    assert next(chat.get_engine().model.parameters()).device.type == "cpu"


def check_model_kwargs(engine, tiny_dir):
    llm = QuantLLM.from_model_id(str(tiny_dir), model_kwargs={"attn_implementation": "eager", "dtype": "bf16"})
    model = llm.get_engine().model
    assert model.config._attn_implementation == "eager" and next(model.parameters()).dtype == torch.bfloat16
    chat = ChatQuant(model=str(tiny_dir), model_kwargs={"attn_implementation": "sdpa"})
    assert chat.get_engine().model.config._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match=r"model_kwargs\['load_in_4bit'\] is not used"):
        QuantLLM.from_model_id(str(tiny_dir), model_kwargs={"load_in_4bit": True})
    with pytest.raises(ValueError, match="model_kwargs apply when QuantLLM loads the model"):
        QuantLLM(engine=engine, model_kwargs={"revision": "main"})


def check_pipeline_kwargs(engine, tiny_dir):
    out = llm_on(engine, pipeline_kwargs={"max_new_tokens": 2}).generate([PROMPT]).generations[0][0]
    assert out.generation_info["completion_tokens"] <= 2


def check_batch_size(engine, tiny_dir):
    calls, real = [], engine.generate
    engine.generate = lambda prompts, params: calls.append(len(prompts)) or real(prompts, params)
    try:
        llm_on(engine, batch_size=2).generate([PROMPT] * 3)
    finally:
        del engine.generate
    assert calls == [2, 1]


def check_kwargs(engine, tiny_dir):
    assert QuantLLM.from_model_id(str(tiny_dir), tags=["mine"]).tags == ["mine"]  # the rest become fields
    with pytest.raises(ValueError, match="no_such_field"):
        QuantLLM.from_model_id(str(tiny_dir), no_such_field=1)


def check_name(engine, tiny_dir):
    assert llm_on(engine, name="x").get_name() == "x"


def check_cache(engine, tiny_dir):
    llm = llm_on(engine, cache=InMemoryCache())
    first = llm.invoke(PROMPT)
    calls, real = [], engine.generate
    engine.generate = lambda prompts, params: calls.append(prompts) or real(prompts, params)
    try:
        assert llm.invoke(PROMPT) == first and calls == []  # answered from the cache
    finally:
        del engine.generate


class Recorder(BaseCallbackHandler):
    def __init__(self):
        self.events = []

    def on_llm_end(self, response, **kwargs):
        self.events.append(response)

    def on_llm_new_token(self, token, **kwargs):
        self.events.append(token)


def check_callbacks(engine, tiny_dir):
    recorder = Recorder()
    llm_on(engine, callbacks=[recorder]).invoke(PROMPT)
    assert len(recorder.events) == 1


def check_verbose(engine, tiny_dir):
    assert llm_on(engine, verbose=True).verbose is True  # read by LangChain's callback manager


def check_tags(engine, tiny_dir):
    assert llm_on(engine, tags=["a"]).tags == ["a"]


def check_metadata(engine, tiny_dir):
    assert llm_on(engine, metadata={"k": 1}).metadata["k"] == 1


def check_custom_get_token_ids(engine, tiny_dir):
    assert llm_on(engine, custom_get_token_ids=lambda text: [0] * 99).get_num_tokens("hi") == 99


def check_pipeline(engine, tiny_dir):
    from transformers import pipeline
    pipe = pipeline("text-generation", model=tiny_llama_lm(), tokenizer=byte_tokenizer(), max_new_tokens=3)
    llm = QuantLLM(pipeline=pipe)
    assert llm.get_engine().model is pipe.model and llm.pipeline_kwargs["max_new_tokens"] == 3


def check_max_new_tokens(engine, tiny_dir):
    check_pipeline_kwargs(engine, tiny_dir)


def check_do_sample(engine, tiny_dir):
    seen, real = [], engine.generate
    engine.generate = lambda prompts, params: seen.append(params) or real(prompts, params)
    try:
        llm_on(engine, pipeline_kwargs={"do_sample": True, "top_k": 3, "top_p": 0.9, "temperature": 0.7,
                                        "repetition_penalty": 1.1, "max_new_tokens": 2}).invoke(PROMPT)
    finally:
        del engine.generate
    assert seen[-1] == GenerationParams(max_new_tokens=2, temperature=0.7, top_k=3, top_p=0.9, repetition_penalty=1.1)


check_temperature = check_top_p = check_top_k = check_repetition_penalty = check_do_sample


def check_num_return_sequences(engine, tiny_dir):
    llm = llm_on(engine, pipeline_kwargs={"max_new_tokens": 4, "do_sample": True, "seed": 1,
                                          "num_return_sequences": 3})
    result = llm.generate([PROMPT, "over the lazy dog"])
    assert [len(g) for g in result.generations] == [3, 3]
    assert result.llm_output["token_usage"]["prompt_tokens"] == 3 * (len(PROMPT) + len("over the lazy dog"))
    again = llm.generate([PROMPT, "over the lazy dog"])  # seeded: sequence i samples with seed + i
    assert [g.text for g in again.generations[0]] == [g.text for g in result.generations[0]]
    with pytest.raises(ConfigError, match="num_return_sequences=2 needs sampling"):
        llm_on(engine).generate([PROMPT], num_return_sequences=2)
    with pytest.raises(ConfigError, match="a stream yields one sequence"):
        list(llm.stream(PROMPT))


def check_return_full_text(engine, tiny_dir):
    plain = llm_on(engine).invoke(PROMPT)
    assert llm_on(engine, pipeline_kwargs={"max_new_tokens": 4, "return_full_text": True}).invoke(PROMPT) == \
        PROMPT + plain
    assert llm_on(engine).invoke(PROMPT, return_full_text=True) == PROMPT + plain
    assert "".join(llm_on(engine).stream(PROMPT, return_full_text=True)) == PROMPT + plain


def check_skip_prompt(engine, tiny_dir):
    plain = llm_on(engine).invoke(PROMPT)
    assert llm_on(engine).invoke(PROMPT, skip_prompt=False) == PROMPT + plain
    assert llm_on(engine).invoke(PROMPT, skip_prompt=True) == plain


def check_eos_token_id(engine, tiny_dir):
    ids = engine.tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        first = int(engine.model(**ids).logits[0, -1].argmax())  # the first token greedy decoding picks
    stopped = llm_on(engine, pipeline_kwargs={"max_new_tokens": 4, "eos_token_id": first}).generate([PROMPT])
    assert stopped.generations[0][0].text == "" and stopped.generations[0][0].generation_info["completion_tokens"] == 1


def check_pad_token_id(engine, tiny_dir):
    # padding is masked out of attention, so the pad id changes no output: accepted and without effect
    assert llm_on(engine, pipeline_kwargs={"max_new_tokens": 4, "pad_token_id": 5}).invoke(PROMPT) == \
        llm_on(engine).invoke(PROMPT)


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def test_every_anchor_argument_has_a_check():
    missing = sorted(anchor_arguments() - set(CHECKS))
    assert not missing, f"HuggingFacePipeline arguments with no honoured-or-refused check: {missing}"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_argument_is_honoured_or_refused_by_name(name, engine, tiny_dir):
    CHECKS[name](engine, tiny_dir)


def test_streaming_field_streams_inside_invoke(engine):
    recorder = Recorder()
    llm = llm_on(engine, streaming=True, callbacks=[recorder])
    text = llm.invoke(PROMPT)
    tokens = [e for e in recorder.events if isinstance(e, str)]
    assert tokens and "".join(tokens) == text == llm_on(engine).invoke(PROMPT)
    result = llm.generate([PROMPT])
    assert result.llm_output["token_usage"]["prompt_tokens"] == len(PROMPT)


def test_chat_model_refuses_output_settings_by_name(engine):
    from langchain_core.messages import HumanMessage
    chat = ChatQuant(llm=llm_on(engine), max_tokens=2)
    chat._engine = GenerationEngine(tiny_llama_lm(), byte_tokenizer(chat_template="{{ messages[0]['content'] }}"))
    assert isinstance(chat.invoke([HumanMessage("hi")], num_return_sequences=1).content, str)  # what it does anyway
    with pytest.raises(ConfigError, match="num_return_sequences=2 is not honoured here"):
        chat.invoke([HumanMessage("hi")], num_return_sequences=2)
    with pytest.raises(ConfigError, match="return_full_text=True is not honoured here"):
        chat.invoke([HumanMessage("hi")], return_full_text=True)

"""QuantLLM / WeightOnlyQuantPipeline on tiny random models (no downloads, seconds)."""
import asyncio

import pytest
from langchain_core.prompts import PromptTemplate

from langchain_quant import QuantLLM, WeightOnlyQuantPipeline
from quant_core import QuantConfig, QuantLinear
from quant_core.engine import GenerationEngine, GenerationParams
from quant_core.testing import byte_tokenizer, tiny_llama_lm, tiny_t5

PROMPT = PromptTemplate.from_template("Question: {question}\nAnswer:")
QUESTIONS = ["What is EEG?", "Why?", "Name a river in France, please."]


@pytest.fixture(scope="module")
def engine():
    return GenerationEngine(tiny_llama_lm(), byte_tokenizer())


@pytest.fixture
def llm(engine):
    return QuantLLM(engine=engine, pipeline_kwargs={"max_new_tokens": 6}, batch_size=2)


def test_alias_is_the_same_class():
    assert WeightOnlyQuantPipeline is QuantLLM


def test_chain_invoke_batch_and_stream_agree(llm, engine):
    chain = PROMPT | llm
    prompts = [PROMPT.format(question=q) for q in QUESTIONS]
    expected = [o.text for o in engine.generate(prompts, GenerationParams(max_new_tokens=6))]
    assert chain.invoke({"question": QUESTIONS[0]}) == expected[0]
    assert chain.batch([{"question": q} for q in QUESTIONS]) == expected
    assert "".join(chain.stream({"question": QUESTIONS[0]})) == expected[0]
    assert asyncio.run(chain.ainvoke({"question": QUESTIONS[1]})) == expected[1]
    assert asyncio.run(chain.abatch([{"question": q} for q in QUESTIONS])) == expected

    async def collect():
        return "".join([c async for c in chain.astream({"question": QUESTIONS[2]})])
    assert asyncio.run(collect()) == expected[2]


def test_batch_runs_real_batches_of_batch_size(engine):
    calls, forward = [], engine.model.forward

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)
    engine.model.forward = counted
    try:
        QuantLLM(engine=engine, pipeline_kwargs={"max_new_tokens": 3}, batch_size=2).batch(QUESTIONS)
    finally:
        del engine.model.forward
    assert calls == [2, 2, 2, 1, 1, 1]


def test_bind_stop_and_generation_info(llm):
    full = llm.invoke("Question: Why?\nAnswer:")
    stop = next(full[i:i + 2] for i in range(1, len(full) - 1) if full.find(full[i:i + 2]) == i)
    assert llm.bind(stop=[stop]).invoke("Question: Why?\nAnswer:") == full[:full.index(stop)]
    result = llm.generate(["Question: Why?\nAnswer:"], stop=[stop])
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] == "stop" and info["prompt_tokens"] == len("Question: Why?\nAnswer:")
    assert result.llm_output["token_usage"]["completion_tokens"] == info["completion_tokens"] <= 6


def test_identifying_params_and_type(llm):
    params = llm._identifying_params
    assert params["batch_size"] == 2 and params["pipeline_kwargs"] == {"max_new_tokens": 6}
    assert llm._llm_type == "quantllm_pipeline"


def test_pipeline_is_wrapped_and_quantized_once():
    from transformers import pipeline

    model, tok = tiny_llama_lm(), byte_tokenizer()
    pipe = pipeline("text-generation", model=model, tokenizer=tok, max_new_tokens=4)
    config = QuantConfig(group_size=32)
    first = QuantLLM(pipeline=pipe, quantization_config=config)
    assert any(isinstance(m, QuantLinear) for m in model.modules())
    second = WeightOnlyQuantPipeline(pipeline=pipe, quantization_config=config)  # no "already quantized" error
    assert first.get_engine() is second.get_engine()
    out = first.generate(["hi"]).generations[0][0].generation_info
    assert out["completion_tokens"] == 4  # the pipeline's max_new_tokens is kept


def test_text2text_generation_with_a_tiny_t5():
    model = tiny_t5()
    llm = QuantLLM(engine=GenerationEngine(model, byte_tokenizer()), task="text2text-generation",
                   pipeline_kwargs={"max_new_tokens": 5})
    result = llm.generate(["translate: hello", "hi"])
    assert [g[0].generation_info["completion_tokens"] for g in result.generations] == [5, 5]
    assert result.llm_output["token_usage"]["prompt_tokens"] == len("translate: hello") + len("hi")
    assert llm.get_engine().is_encoder_decoder


def test_same_model_and_config_quantized_once_per_process(tmp_path, monkeypatch):
    import quant_core.auto as auto

    loads = []

    def fake_load(source, **kwargs):
        loads.append(source)
        return tiny_llama_lm(), byte_tokenizer()
    monkeypatch.setattr(auto, "load_model", fake_load)
    monkeypatch.setattr(auto, "_CACHE", {})
    config = {"weight_dtype": "int4", "group_size": 32}
    a = QuantLLM.from_model_id(str(tmp_path), quantization_config=config)
    b = QuantLLM.from_model_id(str(tmp_path), quantization_config=QuantConfig(**config))
    assert a.get_engine() is b.get_engine() and len(loads) == 1
    QuantLLM.from_model_id(str(tmp_path), quantization_config={"weight_dtype": "nf4", "group_size": 32})
    assert len(loads) == 2  # a different config is a different model


@pytest.mark.parametrize("kwargs, error", [
    (dict(task="fill-mask"), ValueError),
    (dict(task="translation_english_to_x"), ValueError),
    (dict(model_id="no-such-org/no-such-model-xyz"), FileNotFoundError),
    (dict(model_id="/no/such/dir"), FileNotFoundError),
    (dict(quantization_config=42), TypeError),
    (dict(quantization_config={"weight_dtype": "int5"}), ValueError),
    (dict(pipeline_kwargs={"max_new_tokenz": 3}), ValueError),
    (dict(batch_size=0), ValueError),
    (dict(device="tpu"), ValueError),
])
def test_bad_arguments_fail_before_loading(monkeypatch, kwargs, error):
    import quant_core.auto as auto

    def no_loading(*args, **kw):
        raise AssertionError("the model was loaded before the bad argument was caught")
    monkeypatch.setattr(auto, "load_model", no_loading)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(error):
        QuantLLM.from_model_id(**{"model_id": None, **kwargs})


def test_bad_calls_fail_before_any_forward(llm):
    with pytest.raises(TypeError, match="stop"):
        llm.invoke("hi", stop=[3])
    with pytest.raises(ValueError, match="prompt"):
        llm.generate([])


def test_text2text_from_model_id_on_a_saved_tiny_t5(tmp_path, monkeypatch):
    import quant_core.auto as auto

    monkeypatch.setattr(auto, "_CACHE", {})
    tiny_t5().save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    llm = WeightOnlyQuantPipeline.from_model_id(model_id=str(tmp_path), task="text2text-generation",
                                                quantization_config=QuantConfig(weight_dtype="nf4", group_size=32),
                                                pipeline_kwargs={"max_new_tokens": 4})
    chain = PROMPT | llm
    assert chain.batch([{"question": q} for q in QUESTIONS]) == [chain.invoke({"question": q}) for q in QUESTIONS]
    assert any(isinstance(m, QuantLinear) for m in llm.get_engine().model.modules())

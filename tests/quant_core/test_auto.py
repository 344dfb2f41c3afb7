"""quant_core.auto: Intel-style Auto classes and the per-process load+quantize cache, on tiny saved models."""
import pytest
import torch

import quant_core.auto as auto
from quant_core import QuantConfig, QuantLinear
from quant_core.dtypes import as_torch_dtype
from quant_core.engine import GenerationEngine
from quant_core.errors import ConfigError
from quant_core.testing import byte_tokenizer, tiny_llama_lm, tiny_t5


@pytest.fixture
def fresh_cache(monkeypatch):
    monkeypatch.setattr(auto, "_CACHE", {})


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama_lm().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-t5")
    tiny_t5().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def quantized(model):
    return sum(isinstance(m, QuantLinear) for m in model.modules())


def test_causal_lm_is_quantized_on_load_and_cached(fresh_cache, llama_dir):
    config = QuantConfig(weight_dtype="nf4", group_size=32)
    model = auto.AutoModelForCausalLM.from_pretrained(str(llama_dir), quantization_config=config)
    assert quantized(model) == 15  # 7 linears x 2 layers, and lm_head in the default int8
    again = auto.AutoModelForCausalLM.from_pretrained(str(llama_dir), quantization_config=config.to_dict())
    assert again is model
    # load_in_8bit means int8 at the default group of 128, wider than this model's 64-column layers
    assert auto.as_quant_config(load_in_8bit=True) == QuantConfig(weight_dtype="int8")
    int8 = auto.AutoModelForCausalLM.from_pretrained(str(llama_dir), quantization_config=QuantConfig(
        weight_dtype="int8", group_size=64))
    assert int8 is not model and int8.config.quantization_config["weight_dtype"] == "int8"


def test_seq2seq_lm_is_quantized_on_load(fresh_cache, t5_dir):
    model = auto.AutoModelForSeq2SeqLM.from_pretrained(str(t5_dir), quantization_config=QuantConfig(group_size=32))
    assert model.config.is_encoder_decoder and quantized(model) > 0


def test_quantllm_saved_dir_loads_without_quantizing(fresh_cache, llama_dir, tmp_path, monkeypatch):
    from quant_core.serialization import save_quantized

    model = auto.AutoModelForCausalLM.from_pretrained(str(llama_dir), quantization_config=QuantConfig(group_size=32))
    save_quantized(model, byte_tokenizer(), tmp_path / "saved")

    def no_quantize(*args, **kwargs):
        raise AssertionError("a quantllm-saved directory was quantized again")
    monkeypatch.setattr(auto, "quantize", no_quantize)
    loaded, _ = auto.load_for_generation(str(tmp_path / "saved"), quantization_config=QuantConfig(group_size=32))
    assert quantized(loaded) == 15


@pytest.mark.parametrize("call, error", [
    (lambda: auto.as_quant_config("int4"), TypeError),
    (lambda: auto.as_quant_config(QuantConfig(), load_in_4bit=True), ValueError),
    (lambda: auto.as_device("tpu"), ValueError),
    (lambda: as_torch_dtype("float64x"), ValueError),
    (lambda: auto.check_source("/no/such/folder"), FileNotFoundError),
    (lambda: auto.load_for_generation(None, task="fill-mask"), ValueError),
])
def test_bad_arguments_are_clear_errors(call, error):
    with pytest.raises(error):
        call()


def test_devices_in_pipeline_style():
    assert auto.as_device(-1) == auto.as_device("cpu") == auto.as_device(None, device_map="cpu") == "cpu"


def test_an_already_quantized_model_takes_its_own_config_or_none_and_refuses_another(fresh_cache, llama_dir):
    config = QuantConfig(weight_dtype="nf4", group_size=32)
    model = auto.AutoModelForCausalLM.from_pretrained(str(llama_dir), quantization_config=config)
    layer = next(m for m in model.modules() if isinstance(m, QuantLinear))
    assert auto.quantize_once(model, QuantConfig.from_dict(config.to_dict())) is model
    assert next(m for m in model.modules() if isinstance(m, QuantLinear)) is layer  # not quantized again
    with pytest.raises(ConfigError, match=r"different config: weight_dtype='nf4' \(asked: 'int8'\).*"
                                          r"quantization_config=None"):
        auto.quantize_once(model, QuantConfig(weight_dtype="int8", group_size=32))
    del model.config.quantization_config
    with pytest.raises(ConfigError, match="records no quantization_config"):
        auto.quantize_once(model, config)


def test_engines_come_from_for_model_one_per_model(fresh_cache, llama_dir):
    engine = auto.engine_for_source(str(llama_dir), quantization_config={"group_size": 32}, max_batch_size=3)
    assert engine is GenerationEngine.for_model(engine.model, engine.tokenizer)
    assert auto.engine_for_source(str(llama_dir), quantization_config={"group_size": 32}) is engine
    float_model = tiny_llama_lm()
    tok = byte_tokenizer()
    quantized_engine = auto.engine_for_model(float_model, tok, QuantConfig(group_size=32))
    assert quantized(quantized_engine.model) == 15 and quantized_engine.model is float_model  # and the int8 head
    assert auto.engine_for_model(float_model, tok, None) is quantized_engine


@pytest.mark.parametrize("name, dtype", [
    (None, torch.float32), ("auto", torch.float32), ("fp16", torch.float16), ("float16", torch.float16),
    ("torch.bfloat16", torch.bfloat16), ("BF16", torch.bfloat16), (torch.float64, torch.float64),
])
def test_dtype_names(name, dtype):
    assert as_torch_dtype(name) is dtype

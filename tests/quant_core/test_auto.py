"""quant_core.auto: Intel-style Auto classes and the per-process load+quantize cache, on tiny saved models."""
import sys

import pytest

import quant_core.auto as auto
from quant_core import QuantConfig, QuantLinear
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
    assert quantized(model) == 14  # 7 linears x 2 layers; lm_head stays float
    again = auto.AutoModelForCausalLM.from_pretrained(str(llama_dir), quantization_config=config.to_dict())
    assert again is model
    int8 = auto.AutoModelForCausalLM.from_pretrained(str(llama_dir), load_in_8bit=True)
    assert int8 is not model and int8.config.quantization_config["weight_dtype"] == "int8"


def test_seq2seq_lm_is_quantized_on_load(fresh_cache, t5_dir):
    model = auto.AutoModelForSeq2SeqLM.from_pretrained(str(t5_dir), quantization_config=QuantConfig(group_size=32))
    assert model.config.is_encoder_decoder and quantized(model) > 0


def test_quantllm_saved_dir_loads_without_quantizing(fresh_cache, llama_dir, tmp_path, monkeypatch):
    from quant_core.serialization import save_quantized
    quantize_module = sys.modules["quant_core.quantize"]  # the package re-exports a function of that name

    model = auto.AutoModelForCausalLM.from_pretrained(str(llama_dir), quantization_config=QuantConfig(group_size=32))
    save_quantized(model, byte_tokenizer(), tmp_path / "saved")

    def no_quantize(*args, **kwargs):
        raise AssertionError("a quantllm-saved directory was quantized again")
    monkeypatch.setattr(quantize_module, "quantize", no_quantize)
    loaded, _ = auto.load_for_generation(str(tmp_path / "saved"), quantization_config=QuantConfig(group_size=32))
    assert quantized(loaded) == 14


@pytest.mark.parametrize("call, error", [
    (lambda: auto.as_quant_config("int4"), TypeError),
    (lambda: auto.as_quant_config(QuantConfig(), load_in_4bit=True), ValueError),
    (lambda: auto.as_device("tpu"), ValueError),
    (lambda: auto.as_dtype("float64x"), ValueError),
    (lambda: auto.check_source("/no/such/folder"), FileNotFoundError),
    (lambda: auto.load_for_generation(None, task="fill-mask"), ValueError),
])
def test_bad_arguments_are_clear_errors(call, error):
    with pytest.raises(error):
        call()


def test_devices_in_pipeline_style():
    assert auto.as_device(-1) == auto.as_device("cpu") == auto.as_device(None, device_map="cpu") == "cpu"

"""quant_core.load_options and the pass-through of transformers' loading keywords: device_map taken as
transformers takes it when it names one device, model_kwargs reaching from_pretrained, and refusals by name."""
import pytest
import torch

import quant_core.auto as auto
from quant_core import QuantConfig
from quant_core.errors import ConfigError
from quant_core.load_options import as_device, loading_options
from quant_core.serialization import save_quantized
from quant_core.testing import byte_tokenizer, tiny_llama_lm


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-options")
    tiny_llama_lm().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("device_map", ["cpu", "balanced", "sequential", {"": "cpu"},
                                        {"model.embed_tokens": "cpu", "model.layers": torch.device("cpu")}])
def test_a_device_map_naming_one_device_is_that_device(device_map):
    expected = "cuda" if torch.cuda.is_available() and isinstance(device_map, str) and device_map != "cpu" else "cpu"
    assert as_device(None, device_map) == expected
    assert as_device(-1, device_map) == expected


@pytest.mark.parametrize("device_map, message", [
    ({"model": "cpu", "lm_head": 1}, r"spreads the model over \['cpu', 'cuda:1'\].*vLLM's tensor parallelism"),
    ({"model": "cpu", "lm_head": "disk"}, "places modules on 'disk'"),
    ({"model": 1.5}, "device_map values are devices"),
])
def test_a_device_map_over_several_devices_is_refused_by_name(device_map, message):
    with pytest.raises(ConfigError, match=message):
        as_device(None, device_map)


def test_device_and_device_map_must_agree():
    assert as_device("cpu", "cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            as_device("cpu", {"": 0})


def test_model_kwargs_split_into_ours_and_from_pretrained_s():
    options = loading_options({"torch_dtype": "bf16", "trust_remote_code": True, "revision": "abc",
                               "attn_implementation": "eager", "device_map": "cpu"})
    assert options == {"dtype": torch.bfloat16, "trust_remote_code": True, "device_map": "cpu",
                       "model_kwargs": {"revision": "abc", "attn_implementation": "eager"}}
    for key in ("quantization_config", "load_in_4bit", "load_in_8bit", "max_memory", "offload_folder"):
        with pytest.raises(ConfigError, match=rf"model_kwargs\['{key}'\] is not used"):
            loading_options({key: 1})
    with pytest.raises(ConfigError, match="both as an argument and in model_kwargs"):
        loading_options({"device_map": "cpu"}, device_map="auto")
    assert loading_options({"use_safetensors": True})["model_kwargs"] == {}  # what the loader does anyway
    with pytest.raises(ConfigError, match="use_safetensors=False is refused"):
        loading_options({"use_safetensors": False})
    with pytest.raises(ConfigError, match="trust_remote_code must be True or False"):
        loading_options({"trust_remote_code": "yes"})


def test_auto_from_pretrained_passes_model_kwargs_through(llama_dir, monkeypatch):
    monkeypatch.setattr(auto, "_CACHE", {})
    eager = auto.AutoModelForCausalLM.from_pretrained(str(llama_dir), attn_implementation="eager", device_map="cpu")
    sdpa = auto.AutoModelForCausalLM.from_pretrained(str(llama_dir), attn_implementation="sdpa")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    assert eager is not sdpa  # different loading options: a different cached model


def test_a_source_quantllm_reads_itself_refuses_model_kwargs_by_name(llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "_CACHE", {})
    model = auto.AutoModelForCausalLM.from_pretrained(str(llama_dir), quantization_config=QuantConfig(group_size=32))
    save_quantized(model, byte_tokenizer(), tmp_path / "saved")
    with pytest.raises(ConfigError, match=r"model_kwargs \['revision'\] are options of transformers' "
                                          r"from_pretrained.*quantllm's quantllm loader"):
        auto.AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved"), revision="main")

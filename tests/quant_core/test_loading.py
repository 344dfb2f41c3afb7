
import pytest
import torch

from quant_core import QuantConfig, quantize
from quant_core.loading import load_model
from quant_core.serialization import save_quantized
from quant_core.sources import detect


def test_unknown_task_fails_before_loading():
    with pytest.raises(ValueError, match="valid tasks: text-generation, text2text-generation"):
        load_model("/nonexistent", task="summarize")


def test_missing_gguf_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("/nonexistent/model.gguf")


def test_unreachable_model_id(monkeypatch):
    import huggingface_hub.constants

    # the hub library reads the variable once, at import: an earlier test's import left it online, and each
    # request to an unreachable hub then waits out its retries (46 s in the suite)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="local path or a reachable hub id"):
        load_model("no-such-org/no-such-model-xyz")


def test_local_directory_and_quantllm_directory(tiny_hf_dir, tmp_path):
    hf_dir = tiny_hf_dir
    assert detect(str(hf_dir)) == "transformers"
    model, tok = load_model(hf_dir)
    ids = tok("hello world", return_tensors="pt").input_ids
    ref = model(ids).logits
    quantize(model, QuantConfig(weight_dtype="int8", group_size=-1), progress=False)
    out = save_quantized(model, tok, tmp_path / "q")
    assert detect(str(out)) == "quantllm"
    loaded, tok2 = load_model(out)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert (loaded(ids).logits - ref).abs().max() < 0.05
    assert tok2("hello world").input_ids == tok("hello world").input_ids


def test_embedded_default_loads_as_float_llama(smollm2):
    model, tok = smollm2
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None  # gguf marker cleared
    assert getattr(model, "hf_quantizer", None) is None and tok.chat_template

import json
import os

import pytest
import torch

from quant_core import QuantConfig, QuantLinear, quantize
from quant_core.checkpoint_io import atomic_directory
from quant_core.serialization import CheckpointError, WEIGHTS_FILE, load_quantized, save_quantized


@pytest.fixture
def saved(tiny_llama, tmp_path):
    model = quantize(tiny_llama, QuantConfig(weight_dtype="int4", scheme="asym", group_size=48, head_weight_dtype=None), progress=False)
    path = save_quantized(model, None, tmp_path / "q")
    return model, path


def test_round_trip_same_logits_and_greedy_tokens(saved):
    model, path = saved
    ids = torch.tensor([[1, 5, 9, 33, 7]])
    loaded, _ = load_quantized(path)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(ids, **kw), model.generate(ids, **kw))
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied


def test_loaded_layers_hold_only_packed_tensors(saved):
    loaded, _ = load_quantized(saved[1])
    quant = [m for m in loaded.modules() if isinstance(m, QuantLinear)]
    assert len(quant) == 14
    assert all(not hasattr(m, "weight") and m.qweight.dtype == torch.uint8 for m in quant)


def test_config_records_format_and_checksum(saved):
    qc = json.loads((saved[1] / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "quantllm" and qc["weight_dtype"] == "int4_fullrange"
    assert len(qc["checksums"][WEIGHTS_FILE]) == 64 and len(qc["layers"]) == 14


def test_existing_directory_is_not_overwritten(saved):
    model, path = saved
    with pytest.raises(FileExistsError):
        save_quantized(model, None, path)
    save_quantized(model, None, path, overwrite=True)
    assert load_quantized(path)[0] is not None


def test_failed_save_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "partial").write_text("x")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []


def test_float_model_is_refused(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="not quantized"):
        save_quantized(tiny_llama, None, tmp_path / "q")


def test_truncated_file(saved):
    weights = saved[1] / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="checksum"):
        load_quantized(saved[1])


def test_tampered_file(saved):
    weights = saved[1] / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="modified"):
        load_quantized(saved[1])


def _edit_config(path, fn):
    cfg_path = path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    fn(cfg["quantization_config"])
    cfg_path.write_text(json.dumps(cfg))


def test_config_disagreeing_with_tensors(saved):
    def shrink(qc):
        qc["layers"]["model.layers.0.mlp.down_proj"]["group_size"] = 32
    _edit_config(saved[1], shrink)
    with pytest.raises(CheckpointError, match="config.json was modified"):
        load_quantized(saved[1])
    with pytest.raises(CheckpointError, match="down_proj.scales has shape"):  # the structural check behind it
        load_quantized(saved[1], verify=False)


def test_missing_tensor(saved):
    def extra_layer(qc):
        qc["layers"]["model.layers.0.mlp.extra"] = dict(qc["layers"]["model.layers.0.mlp.up_proj"])
        qc.pop("checksums")
    _edit_config(saved[1], extra_layer)
    with pytest.raises(CheckpointError, match="has no checksums"):
        load_quantized(saved[1])
    with pytest.raises(CheckpointError, match="extra.qweight is missing"):
        load_quantized(saved[1], verify=False)


def test_not_a_safetensors_file(saved):
    _edit_config(saved[1], lambda qc: qc.pop("checksums"))
    (saved[1] / WEIGHTS_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_quantized(saved[1], verify=False)

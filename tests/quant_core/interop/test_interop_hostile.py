"""Imported checkpoints are checked against their config and the model before use: a GPTQ,
AWQ or GGUF input whose tensors the config does not describe is one CheckpointError, never
a model that generates garbage (issue 17, part 2)."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from quant_core import QuantConfig, quantize
from quant_core.errors import CheckpointError
from quant_core.interop import export_awq, export_gptq
from quant_core.loading import load_model

IDS = torch.tensor([[5, 17, 250, 3, 99, 1]])


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _edit(path, fn, name="config.json"):
    config = json.loads((path / name).read_text())
    fn(config["quantization_config"] if name == "config.json" else config)
    (path / name).write_text(json.dumps(config))


def _edit_both(path, fn):
    _edit(path, fn)
    if (path / "quantize_config.json").exists():
        _edit(path, fn, "quantize_config.json")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{name: (directory, logits)} of tiny exports; tests tamper with copies."""
    from quant_core.testing import tiny_llama_lm

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, scheme, write in (("awq", "asym", lambda m, p: export_awq(m, None, p)),
                                ("gptq_v1_sym", "sym", lambda m, p: export_gptq(m, None, p)),
                                ("gptq_v1_asym", "asym", lambda m, p: export_gptq(m, None, p)),
                                ("gptq_v2_asym", "asym", lambda m, p: export_gptq(m, None, p, "gptq_v2"))):
        model = quantize(tiny_llama_lm(), QuantConfig(weight_dtype="int4", group_size=32, scheme=scheme, head_weight_dtype=None), progress=False)
        write(model, root / name)
        out[name] = (root / name, _logits(model))
    return out


@pytest.fixture
def copy_of(exports, tmp_path):
    def copy(name):
        path, ref = exports[name]
        return shutil.copytree(path, tmp_path / name), ref
    return copy


def test_untouched_exports_load_exactly(exports):
    for path, ref in exports.values():
        assert torch.equal(_logits(load_model(path)[0]), ref)


@pytest.mark.parametrize("group_size", [16, 64, 128, 0, -1, 576])
def test_awq_config_group_size_that_does_not_fit_the_tensors(copy_of, group_size):
    path, _ = copy_of("awq")
    _edit(path, lambda qc: qc.update(group_size=group_size))
    with pytest.raises(CheckpointError, match="group_size"):
        load_model(path)


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_gptq_bits_over_4bit_tensors(copy_of, bits):
    path, _ = copy_of("gptq_v1_sym")
    _edit_both(path, lambda qc: qc.update(bits=bits))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(path)


def test_gptq_without_g_idx_and_another_group_size(copy_of):
    from hostile_interop_helpers import drop_tensors

    path, ref = copy_of("gptq_v1_sym")
    drop_tensors(path, lambda name: name.endswith(".g_idx"))
    assert torch.equal(_logits(load_model(path)[0]), ref)  # without g_idx, groups are k // 32: still exact
    _edit_both(path, lambda qc: qc.update(group_size=64))
    with pytest.raises(CheckpointError, match="group"):
        load_model(path)
    _edit_both(path, lambda qc: qc.update(group_size=40))  # the same group count (2 of 64), other groups
    with pytest.raises(CheckpointError, match="groups of 32 inputs"):
        load_model(path)


@pytest.mark.parametrize("name,label", [("gptq_v1_sym", "gptq_v2"), ("gptq_v1_asym", "gptq_v2"),
                                        ("gptq_v2_asym", "gptq")])
def test_mislabelled_checkpoint_format(copy_of, name, label):
    path, _ = copy_of(name)
    _edit_both(path, lambda qc: qc.update(checkpoint_format=label, format=label))
    with pytest.raises(CheckpointError, match="labelled checkpoint_format"):
        load_model(path)


def test_truncated_gptq_weights_file(copy_of):
    path, _ = copy_of("gptq_v1_asym")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: os.path.getsize(weights) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(path)


@pytest.mark.parametrize("value", ["4", None, True, 4.5])
def test_gptq_bits_of_the_wrong_type(copy_of, value):
    path, _ = copy_of("gptq_v1_sym")
    _edit_both(path, lambda qc: qc.update(bits=value))
    with pytest.raises(CheckpointError):
        load_model(path)


def test_truncated_gguf_header_is_one_clear_error(tiny_llama_320, tiny_tokenizer, tmp_path, monkeypatch):
    from quant_core.interop import export_gguf

    monkeypatch.setenv("QUANTLLM_CACHE", str(tmp_path / "cache"))
    quantize(tiny_llama_320, QuantConfig(weight_dtype="int4", group_size=32, head_weight_dtype=None), progress=False)
    gguf_file = export_gguf(tiny_llama_320, tiny_tokenizer, tmp_path / "m.gguf", progress=False)
    data = gguf_file.read_bytes()
    for cut in (3, 30, 2000, len(data) - 10):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        for source in (str(bad), str(bad) + "#packed"):
            with pytest.raises(CheckpointError, match="not a readable GGUF file"):
                load_model(source)

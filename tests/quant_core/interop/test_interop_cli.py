"""``quantllm export``: from a quantllm-saved directory to each target, and its refusal exit."""
from __future__ import annotations

import json

import pytest
import torch

from quant_core import QuantConfig, quantize
from quant_core.cli import main
from quant_core.interop import export
from quant_core.serialization import save_quantized


@pytest.fixture
def saved_int4(tiny_llama_320, tiny_tokenizer, tmp_path):
    quantize(tiny_llama_320, QuantConfig(weight_dtype="int4", group_size=32, head_weight_dtype=None))
    return save_quantized(tiny_llama_320, tiny_tokenizer, tmp_path / "q"), tiny_llama_320


@pytest.mark.parametrize("target", ["gptq", "awq", "gguf"])
def test_export_command_writes_each_target(saved_int4, tmp_path, target, capsys, monkeypatch):
    from quant_core.loading import load_model

    monkeypatch.setenv("QUANTLLM_CACHE", str(tmp_path / "cache"))
    path, model = saved_int4
    out = tmp_path / ("out.gguf" if target == "gguf" else "out")
    assert main(["export", str(path), "--to", target, "-o", str(out)]) == 0
    assert f"exported to {target}" in capsys.readouterr().out
    back, _ = load_model(str(out) + ("#packed" if target == "gguf" else ""))
    ids = torch.tensor([[5, 17, 250, 3, 99]])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
    if target != "gguf":
        qc = json.loads((out / "config.json").read_text())["quantization_config"]
        assert qc["quant_method"] == target and qc["bits"] == 4 and qc["group_size"] == 32


def test_export_command_refuses_with_the_settings_that_work(tiny_llama, tmp_path, capsys):
    quantize(tiny_llama, QuantConfig(weight_dtype="nf4", group_size=32))
    saved = save_quantized(tiny_llama, None, tmp_path / "nf4")
    assert main(["export", str(saved), "--to", "gptq", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "nf4 is a codebook format" in err and "int4_fullrange" in err
    assert not (tmp_path / "x").exists()


def test_unknown_target_names_the_known_ones(tiny_llama):
    with pytest.raises(ValueError, match="gptq, awq, gguf"):
        export(tiny_llama, None, "unused", "exl2")

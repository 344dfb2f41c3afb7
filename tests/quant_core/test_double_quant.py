"""Double quantization: scale codes, their error bound, the layer, save/load and the checks on load."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from quant_core import QuantConfig, QuantLinear, quantize
from quant_core.algorithms.rtn import rtn
from quant_core.double_quant import CODE_MAX, DoubleQuantScales, n_blocks
from quant_core.errors import CheckpointError, ConfigError
from quant_core.file_headers import read_safetensors_header
from quant_core.serialization import load_quantized, save_quantized
from quant_core.interop import export
from quant_core.loading import load_model
from quant_core.testing import byte_tokenizer, tiny_llama_lm


def _scales(n, g, signed=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s = torch.rand(n, g, generator=gen) * 0.05 + 0.001
    return s * torch.where(torch.rand(n, g, generator=gen) < 0.5, -1.0, 1.0) if signed else s


@pytest.mark.parametrize("n,g,block,signed", [(37, 5, 256, False), (64, 9, 64, True), (8, 1, 256, False),
                                              (300, 3, 256, True)])
def test_decoded_scales_within_half_a_code_step(n, g, block, signed):
    s = _scales(n, g, signed)
    dq = DoubleQuantScales.encode(s, block)
    assert dq.codes.dtype == torch.int8 and dq.codes.shape == (n, g)
    assert dq.absmax.shape == (n_blocks(n * g, block),) and dq.offset.shape == (1,)
    assert int(dq.codes.abs().max()) <= CODE_MAX
    err = (dq.decode() - s).abs().reshape(-1)
    bound = (dq.absmax / (2 * CODE_MAX)).repeat_interleave(block)[: n * g]
    assert (err <= bound * (1 + 1e-5) + 1e-9).all()  # half a step of the block's own code, plus fp32 rounding


def test_a_block_of_equal_scales_decodes_exactly():
    s = torch.full((4, 64), 0.0123)
    dq = DoubleQuantScales.encode(s, 256)
    assert torch.equal(dq.decode(), s) and not dq.codes.any()


def test_packed_weight_stores_codes_and_kernels_read_decoded_scales():
    lin = torch.nn.Linear(192, 40)
    config = QuantConfig(weight_dtype="nf4", group_size=64, double_quant=True)
    packed = rtn(lin.weight, config).pack(config)
    plain_config = QuantConfig(weight_dtype="nf4", group_size=64)
    plain = rtn(lin.weight, plain_config).pack(plain_config)
    assert set(packed.tensors()) == {"qweight", "scale_codes", "scale_absmax", "scale_offset"}
    assert torch.equal(packed.qweight, plain.qweight)  # the codes the algorithm chose are kept
    assert packed.scales.dtype == torch.float16 and torch.equal(packed.scales, packed.double_quant.decode(torch.float16))
    assert packed.nbytes() < plain.nbytes() and not packed.problems()
    q = QuantLinear.from_packed(packed, lin.bias, kernel="reference")
    x = torch.randn(3, 192)
    torch.testing.assert_close(q(x), torch.nn.functional.linear(x, packed.dequantize(), lin.bias), rtol=1e-5, atol=1e-5)
    assert "scales" not in q.state_dict() and "scale_codes" in q.state_dict()


def test_state_dict_round_trip_decodes_the_scales_once():
    lin = torch.nn.Linear(128, 24, bias=False)
    config = QuantConfig(group_size=32, scheme="asym", double_quant=True, double_quant_block=16)
    q = QuantLinear.from_packed(rtn(lin.weight, config).pack(config), None)
    fresh = QuantLinear(128, 24, "int4", 32, sym=False, bias=False, double_quant_block=16)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.scales, q.scales)
    x = torch.randn(2, 128)
    assert torch.equal(fresh(x), q(x))


def test_double_quant_block_without_double_quant_is_refused():
    with pytest.raises(ConfigError, match="double_quant_block=64 is a setting of double_quant=True"):
        QuantConfig(double_quant_block=64)


def _quantized_dir(tiny_llama, tmp_path, **fields):
    config = QuantConfig(weight_dtype="nf4", group_size=32, double_quant=True, double_quant_block=8, **fields)
    model = quantize(tiny_llama, config, progress=False)
    save_quantized(model, byte_tokenizer(), tmp_path / "q")
    return model, tmp_path / "q"


def test_save_and_load_keep_the_codes_and_the_outputs(tiny_llama, tmp_path):
    model, path = _quantized_dir(tiny_llama, tmp_path)
    header, _ = read_safetensors_header(path / "model.safetensors")
    layer = "model.layers.0.mlp.down_proj"
    assert f"{layer}.scales" not in header
    assert header[f"{layer}.scale_codes"][0] == "I8" and header[f"{layer}.scale_absmax"][0] == "F32"
    manifest = json.loads((path / "config.json").read_text())["quantization_config"]["layers"][layer]
    assert manifest["double_quant_block"] == 8
    loaded, _ = load_quantized(path)
    ids = torch.randint(3, 200, (1, 12))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert torch.equal(loaded.get_submodule(layer).scales, model.get_submodule(layer).scales)


def _edit_manifest(path, layer, **change):
    raw = json.loads((path / "config.json").read_text())
    raw["quantization_config"]["layers"][layer].update(change)
    (path / "config.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("change,message", [
    ({"double_quant_block": "8"}, "double_quant_block is '8', not a positive int"),
    ({"double_quant_block": 0}, "not a positive int"),
    ({"double_quant_block": 16}, "scale_absmax has shape"),  # 4 blocks of 8 are not 2 of 16
])
def test_a_tampered_manifest_is_refused(tiny_llama, tmp_path, change, message):
    _, path = _quantized_dir(tiny_llama, tmp_path)
    _edit_manifest(path, "model.layers.1.self_attn.q_proj", **change)
    with pytest.raises(CheckpointError, match=message):
        load_quantized(path, verify=False)


def test_non_finite_second_level_scales_are_refused(tiny_llama, tmp_path):
    _, path = _quantized_dir(tiny_llama, tmp_path)
    state = load_file(str(path / "model.safetensors"))
    state["model.layers.0.self_attn.o_proj.scale_absmax"][0] = float("nan")
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        metadata = f.metadata()  # the aliases of tied tensors, as quantllm wrote them
    save_file(state, str(path / "model.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="not finite"):
        load_quantized(path, verify=False)


def test_gptq_export_of_a_double_quantized_model_holds_its_decoded_scales(tmp_path):
    """Exports write the scales the kernels read (fp16, exact), never the codes as stray tensors."""
    config = QuantConfig(group_size=32, scheme="asym", double_quant=True, double_quant_block=8,
                         head_weight_dtype=None)  # a float head: the export then holds exactly this model
    model = quantize(tiny_llama_lm(), config, progress=False)
    exported, _ = load_model(str(export(model, byte_tokenizer(), tmp_path / "gptq", to="gptq")))
    ids = torch.randint(3, 200, (1, 10))
    assert torch.equal(exported(ids).logits, model(ids).logits)

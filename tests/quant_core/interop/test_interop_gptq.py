"""GPTQ import/export: bit-exact against GPTQ's own dequantization formula, round trips,
refusals, and the fields vLLM's GPTQ config parsers require."""
from __future__ import annotations

import json

import pytest
import torch

from quant_core import QuantConfig, quantize
from quant_core.interop import ExportError, export_gptq, load_gptq
from quant_core.interop.gptq import layer_from_gptq, layer_to_gptq
from quant_core.loading import load_model
from quant_core.modules import QuantLinear
from quant_core.serialization import load_quantized, save_quantized
from quant_core.sources import detect


def gptq_reference_dequant(qweight, qzeros, scales, g_idx, bits, checkpoint_format):
    """Written from the GPTQ layout description, independently of the importer: codes are a
    little-endian bit stream down each qweight column (AutoGPTQ's shift-and-mask for 2/4/8
    bits; 3-bit codes straddle words, so read bit by bit); v1 zeros are stored minus one."""
    def stream(words):  # int32 [W, C] -> bits [W*32, C], bit j of word w at row 32w + j
        shifts = torch.arange(32, dtype=torch.int64)
        return ((words.to(torch.int64)[:, None, :] >> shifts[None, :, None]) & 1).reshape(-1, words.shape[1])

    def codes(words, count):
        if bits in (2, 4, 8):
            shifts = torch.arange(0, 32, bits, dtype=torch.int64)
            vals = (words.to(torch.int64)[:, None, :] >> shifts[None, :, None]) & (2 ** bits - 1)
            return vals.reshape(-1, words.shape[1])[:count]
        b = stream(words)[: count * bits].reshape(count, bits, -1)
        return sum(b[:, t] << t for t in range(bits))

    k, n = g_idx.shape[0], qweight.shape[1]
    q = codes(qweight, k)  # [K, N]
    z = codes(qzeros.t().contiguous(), n).t()  # qzeros rows are streams along N
    if checkpoint_format == "gptq":
        z = (z + 1) & (2 ** bits - 1)
    g = g_idx.long()
    return (scales.float()[g] * (q - z[g]).float()).t()  # [N, K]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("act_order", [False, True])
def test_import_is_bit_exact_to_gptq_dequantization(bits, checkpoint_format, act_order):
    gen = torch.Generator().manual_seed(bits * 10 + act_order)
    k, n, gs = 128, 64, 32
    qweight = torch.randint(-2 ** 31, 2 ** 31 - 1, (k * bits // 32, n), generator=gen, dtype=torch.int64).to(torch.int32)
    qzeros = torch.randint(-2 ** 31, 2 ** 31 - 1, (k // gs, n * bits // 32), generator=gen, dtype=torch.int64).to(torch.int32)
    scales = (torch.rand(k // gs, n, generator=gen) * 0.1 + 1e-3).half()
    g_idx = torch.arange(k, dtype=torch.int32) // gs
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    packed = layer_from_gptq(qweight, qzeros, scales, g_idx, bits, gs, checkpoint_format)
    expected = gptq_reference_dequant(qweight, qzeros, scales, g_idx, bits, checkpoint_format)
    assert torch.equal(packed.dequantize(), expected)
    assert (packed.g_idx is not None) == act_order
    # and back: the exporter reproduces the source tensors bit for bit
    if checkpoint_format == "gptq_v2" or bool((packed.zeros != 0).all()):
        out = layer_to_gptq(packed, checkpoint_format)
        assert torch.equal(out["qweight"], qweight) and torch.equal(out["scales"], scales)
        assert torch.equal(out["qzeros"], qzeros) and torch.equal(out["g_idx"], g_idx)


@pytest.mark.parametrize("weight_dtype,group_size,scheme,ckpt", [
    ("int4", 32, "sym", "gptq"), ("int4", 32, "asym", "gptq_v2"), ("int3", 32, "asym", "gptq_v2"),
    ("int8", -1, "sym", "gptq"), ("int2", 32, "sym", "gptq"), ("int4_clip", 16, "sym", "gptq"),
])
def test_round_trip_keeps_logits_exactly(tiny_llama, tmp_path, weight_dtype, group_size, scheme, ckpt):
    quantize(tiny_llama, QuantConfig(weight_dtype=weight_dtype, group_size=group_size, scheme=scheme, head_weight_dtype=None))
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny_llama(ids).logits
    export_gptq(tiny_llama, None, tmp_path / "gptq", checkpoint_format=ckpt)
    assert detect(str(tmp_path / "gptq")) == "gptq"
    model, _ = load_model(tmp_path / "gptq")  # through the loader's detector
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
    for name, m in tiny_llama.named_modules():
        if isinstance(m, QuantLinear):
            assert torch.equal(model.get_submodule(name).packed.dequantize(), m.packed.dequantize())
    again, _ = load_quantized(save_quantized(model, None, tmp_path / "saved"))  # and as a quantllm checkpoint
    with torch.no_grad():
        assert torch.equal(again(ids).logits, ref)


def test_act_order_g_idx_survives_the_round_trip(tiny_llama, tmp_path):
    quantize(tiny_llama, QuantConfig(weight_dtype="int4", group_size=32))
    layer = tiny_llama.model.layers[0].mlp.down_proj
    k = layer.in_features
    layer.g_idx = (torch.arange(k, dtype=torch.int32) // 32)[torch.randperm(k, generator=torch.Generator().manual_seed(1))]
    export_gptq(tiny_llama, None, tmp_path / "g")
    qc = json.loads((tmp_path / "g" / "config.json").read_text())["quantization_config"]
    assert qc["desc_act"] is True
    model, _ = load_gptq(tmp_path / "g")
    assert torch.equal(model.model.layers[0].mlp.down_proj.g_idx, layer.g_idx)


def test_refuses_codebook_formats_naming_what_gptq_holds(tiny_llama, tmp_path):
    quantize(tiny_llama, QuantConfig(weight_dtype="nf4", group_size=32))
    with pytest.raises(ExportError, match=r"nf4 is a codebook format.*int4_fullrange.*asym"):
        export_gptq(tiny_llama, None, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_v1_layout_refuses_a_zero_point_of_zero(tiny_llama, tmp_path):
    quantize(tiny_llama, QuantConfig(weight_dtype="int4", group_size=32, scheme="asym"))
    tiny_llama.model.layers[0].mlp.up_proj.zeros[0, 0] = 0
    with pytest.raises(ExportError, match="gptq_v2"):
        export_gptq(tiny_llama, None, tmp_path / "x", checkpoint_format="gptq")


def test_refuses_a_partial_last_group_naming_the_sizes_that_divide(tiny_llama, tmp_path):
    """vLLM cannot load g128 over SmolLM2's 576 columns; here g64 over the tiny model's 160 (down_proj)."""
    quantize(tiny_llama, QuantConfig(weight_dtype="int4", group_size=64))
    with pytest.raises(ExportError, match=r"group_size 64 leaves a partial last group in 2 layer\(s\) "
                                          r"\(e\.g\. model\.layers\.0\.mlp\.down_proj: 160 input columns\).*"
                                          r"width \[64, 160\]: 16, 32, or -1"):
        export_gptq(tiny_llama, None, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def vllm_gptq_config_check(qc: dict, layers: dict[str, tuple[int, int]]) -> list[str]:
    """The checks vLLM applies to a GPTQ checkpoint's config (read from vllm's source,
    model_executor/layers/quantization/gptq.py and gptq_marlin.py; vllm itself needs a
    CUDA torch build and is not installed here): from_config reads bits, group_size, desc_act
    (and sym for Marlin) with get_from_keys, which raises on a missing key; bits in 2/3/4/8;
    create_weights needs input % group_size == 0 and output % (32 / bits) == 0."""
    problems = [f"missing {key}" for key in ("bits", "group_size", "desc_act", "sym") if key not in qc]
    if qc.get("bits") not in (2, 3, 4, 8):
        problems.append(f"bits {qc.get('bits')} not in 2/3/4/8")
    for name, (k, n) in layers.items():
        gs = k if qc["group_size"] == -1 else qc["group_size"]
        if k % gs or n % (32 // qc["bits"]):
            problems.append(f"{name} shape {(k, n)} not aligned")
    return problems


def test_export_has_every_field_vllm_requires(tiny_llama, tmp_path):
    quantize(tiny_llama, QuantConfig(weight_dtype="int4", group_size=32))
    export_gptq(tiny_llama, None, tmp_path / "v")
    qc = json.loads((tmp_path / "v" / "config.json").read_text())["quantization_config"]
    legacy = json.loads((tmp_path / "v" / "quantize_config.json").read_text())  # vLLM's get_config_filenames
    layers = {n: (m.in_features, m.out_features) for n, m in tiny_llama.named_modules() if isinstance(m, QuantLinear)}
    assert vllm_gptq_config_check(qc, layers) == [] and legacy == qc
    assert qc["quant_method"] == "gptq" and qc["sym"] is True and qc["checkpoint_format"] == "gptq"
    # Marlin (vLLM's fast path) takes 4/8-bit symmetric: (bits, sym) in its TYPE_MAP
    assert (qc["bits"], qc["sym"]) in {(4, True), (8, True)}
    broken = {k: v for k, v in qc.items() if k != "desc_act"}
    assert vllm_gptq_config_check(broken, layers) == ["missing desc_act"]

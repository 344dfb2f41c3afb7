"""The real GPTQ consumer and producer: GPTQModel (CPU, its torch kernel) loads our GPTQ export,
and quantllm loads a checkpoint GPTQModel made; weights match GPTQModel's own dequantization
bit for bit (in fp16, where it computes) and logits agree."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from quant_core import QuantConfig, quantize
from quant_core.interop import export_gptq, load_gptq
from quant_core.modules import QuantLinear

# Imported inside the tests: importing GPTQModel takes ~10 s, which collection should not pay.
GPTQMODEL_ERROR = None if importlib.util.find_spec("gptqmodel") else (
    "gptqmodel is not installed (pip install --no-deps gptqmodel==7.6.0 PyPcre LogBar Defuser TokeNicer "
    "Device-SMI: newer releases require torch 2.14 and its dependency pins would replace this venv's numpy)")


def gptqmodel():
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # its default asks for more workers than 2 cores allow
    import gptqmodel as gm
    return gm


needs_gptqmodel = pytest.mark.skipif(GPTQMODEL_ERROR is not None, reason=GPTQMODEL_ERROR or "")


def assert_same_as_gptqmodel(ours, theirs, ids):
    """GPTQModel dequantizes to fp16 [in, out]; ours is exact fp32 [out, in]: equal after rounding."""
    for name, m in ours.named_modules():
        if isinstance(m, QuantLinear):
            w = theirs.get_submodule(name).dequantize_weight()
            assert torch.equal(w.t().float(), m.packed.dequantize(torch.float16).float()), name
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits.float()
    assert (a - b).abs().max().item() < 5e-3 * a.abs().max().item()  # fp16 compute on their side


@needs_gptqmodel
@pytest.mark.parametrize("scheme,act_order,ckpt", [
    ("sym", False, "gptq"), pytest.param("asym", True, "gptq_v2", marks=pytest.mark.slow)])
def test_gptqmodel_loads_our_export(tiny_llama_320, tiny_tokenizer, tmp_path, scheme, act_order, ckpt):
    """(GPTQModel reads asym v1 "gptq" files only from its own quantizer, because older tools
    wrote zero points of 0 wrongly in v1; asym goes to it as gptq_v2.)"""
    model = quantize(tiny_llama_320, QuantConfig(weight_dtype="int4", group_size=32, scheme=scheme, head_weight_dtype=None))
    if act_order:
        layer = model.model.layers[0].mlp.down_proj
        layer.g_idx = (torch.arange(layer.in_features, dtype=torch.int32) // 32)[
            torch.randperm(layer.in_features, generator=torch.Generator().manual_seed(0))]
    export_gptq(model, tiny_tokenizer, tmp_path / "ours", checkpoint_format=ckpt)
    gm = gptqmodel()
    theirs = gm.GPTQModel.load(str(tmp_path / "ours"), device="cpu", backend=gm.BACKEND.TORCH, dtype=torch.float16)
    assert_same_as_gptqmodel(model, theirs.model, torch.tensor([[5, 17, 250, 3, 99]]))


@pytest.mark.slow  # GPTQModel's own quantization pass: a minute or two on 2 cores
@needs_gptqmodel
def test_quantllm_loads_a_checkpoint_gptqmodel_made(tiny_llama_320, tiny_tokenizer, tmp_path):
    tiny_llama_320.save_pretrained(tmp_path / "float")
    tiny_tokenizer.save_pretrained(tmp_path / "float")
    gm = gptqmodel()
    qconfig = gm.QuantizeConfig(bits=4, group_size=32, sym=False, desc_act=True)
    made = gm.GPTQModel.load(str(tmp_path / "float"), qconfig, device="cpu")
    made.quantize(["the quick brown fox jumps over the lazy dog " * 8] * 16, batch_size=4)
    made.save(str(tmp_path / "theirs"))
    ours, _ = load_gptq(tmp_path / "theirs")
    assert any(m.g_idx is not None for m in ours.modules() if isinstance(m, QuantLinear))  # act order kept
    theirs = gm.GPTQModel.load(str(tmp_path / "theirs"), device="cpu", backend=gm.BACKEND.TORCH, dtype=torch.float16)
    assert_same_as_gptqmodel(ours, theirs.model, torch.tensor([[5, 17, 250, 3, 99]]))


@pytest.mark.slow  # importing GPTQModel's kernels through transformers: ~15 s
@needs_gptqmodel
def test_transformers_awq_integration_loads_our_awq_export(tiny_llama_320, tiny_tokenizer, tmp_path):
    """transformers' own AWQ path (AutoModelForCausalLM + quantization_config quant_method awq, which
    runs GPTQModel's AWQ kernels on CPU) reads our GEMM-layout export."""
    from transformers import AutoModelForCausalLM

    from quant_core.interop import export_awq

    gptqmodel()
    model = quantize(tiny_llama_320, QuantConfig(weight_dtype="int4", group_size=32, scheme="asym"))
    export_awq(model, tiny_tokenizer, tmp_path / "awq")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "awq", device_map="cpu", dtype=torch.float16)
    assert "Awq" in type(theirs.model.layers[0].self_attn.q_proj).__name__
    ids = torch.tensor([[5, 17, 250, 3, 99]])
    with torch.no_grad():
        a, b = model(ids).logits, theirs(ids).logits.float()
    assert (a - b).abs().max().item() < 5e-3 * a.abs().max().item()

"""transformers' own GPTQ integration loads our GPTQ export: ``AutoModelForCausalLM.from_pretrained(dir)``
on CPU goes through its GptqHfQuantizer (optimum's GPTQQuantizer, which picks a GPTQModel kernel), reads
the config our exporter writes (quant_method, bits, group_size, sym, desc_act, format/checkpoint_format),
and its weights and logits agree with quantllm's loader of the same directory.

On CPU GPTQModel's "auto" backend selects TorchAtenLinear (aten::_weight_int4pack_mm_for_cpu, which
computes in bf16); backend="torch" selects TorchLinear (fp16 dequantized weights, fp32 matmul)."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from quant_core import QuantConfig, quantize
from quant_core.interop import export
from quant_core.loading import load_model
from quant_core.modules import QuantLinear

# transformers' GptqHfQuantizer imports optimum.gptq (>= 1.24) and runs GPTQModel's kernels (>= 1.4.3).
MISSING = [name for name in ("optimum", "gptqmodel") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=(
    f"transformers' GPTQ loading needs {' and '.join(MISSING)} (pip install optimum==2.3.0; "
    f"pip install --no-deps gptqmodel==7.6.0 PyPcre LogBar Defuser TokeNicer Device-SMI)"))

# Logit tolerance, relative to max |logits| of our model. Both sides use the same integer codes and
# fp16 scales (weights are compared exactly below), so the logits differ only by their compute:
# * auto -> TorchAtenLinear casts activations and scales to bf16 (unit roundoff 2**-9 ~ 2e-3) before
#   its int4 matmul: 1e-2, a few bf16 roundings over the tiny model's 2 blocks (measured 1.3e-3 to 1.7e-3);
# * torch -> TorchLinear rounds each dequantized weight scale * (q - z) to fp16 (2**-11 ~ 5e-4)
#   and multiplies in fp32: 1e-3 (measured 1.0e-4 to 1.5e-4).
TOLERANCE = {None: 1e-2, "torch": 1e-3}
KERNEL = {None: "TorchAtenLinear", "torch": "TorchLinear"}


# TorchLinear torch.compiles its dequantization on first use: 4-10 s a case on 2 cores.
@pytest.mark.parametrize("backend", [None, pytest.param("torch", marks=pytest.mark.slow)])
@pytest.mark.parametrize("scheme,act_order,ckpt", [("sym", False, "gptq"), ("asym", True, "gptq_v2")])
def test_transformers_gptq_integration_loads_our_gptq_export(tiny_llama_320, tiny_tokenizer, tmp_path,
                                                             scheme, act_order, ckpt, backend):
    from transformers import AutoModelForCausalLM, GPTQConfig

    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # GPTQModel's default asks for more than 2 cores
    model = quantize(tiny_llama_320, QuantConfig(weight_dtype="int4", group_size=32, scheme=scheme))
    if act_order:  # desc_act: a permuted g_idx on one layer
        layer = model.model.layers[0].mlp.down_proj
        layer.g_idx = (torch.arange(layer.in_features, dtype=torch.int32) // 32)[
            torch.randperm(layer.in_features, generator=torch.Generator().manual_seed(0))]
    out = export(model, tiny_tokenizer, tmp_path / "gptq", "gptq", checkpoint_format=ckpt)  # `export --to gptq`

    # The plain call a user makes; backend="torch" only adds a loading attribute to the saved config.
    extra = {} if backend is None else {"quantization_config": GPTQConfig(bits=4, backend=backend)}
    theirs = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", **extra).eval()
    qc = theirs.config.quantization_config
    assert (qc.bits, qc.group_size, qc.sym, qc.desc_act) == (4, 32, scheme == "sym", act_order)
    ours, _ = load_model(out)  # quantllm's loader of the same directory

    quantized = {name: m for name, m in ours.named_modules() if isinstance(m, QuantLinear)}
    assert len(quantized) == 14  # 7 linears per block, 2 blocks
    for name, m in quantized.items():  # before any forward: TorchAtenLinear repacks on its first call
        kernel = theirs.get_submodule(name)
        assert type(kernel).__name__ == KERNEL[backend], name
        # GPTQModel dequantizes to fp16 [in, out]; ours is exact [out, in]: equal after fp16 rounding.
        assert torch.equal(kernel.dequantize_weight().t().float(), m.packed.dequantize(torch.float16).float()), name

    ids = torch.tensor([[5, 17, 250, 3, 99, 42, 7]])
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits.float()
    diff, scale = (a - b).abs().max().item(), a.abs().max().item()
    assert diff < TOLERANCE[backend] * scale, f"max |diff| {diff:.3g} vs max |logit| {scale:.3g}"

import copy

import pytest
import torch

from quant_core import QuantConfig, QuantLinear, quantize
from quant_core.algorithms.rtn import rtn
from quant_core.errors import ConfigError


def test_quantize_replaces_linears_but_lm_head(tiny_llama):
    model = quantize(tiny_llama, QuantConfig(group_size=32, head_weight_dtype=None), progress=False)
    quant = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert len(quant) == 2 * 7
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, QuantLinear)
    assert model.config.quantization_config["quant_method"] == "quantllm"


def test_quant_linear_keeps_no_float_weight():
    lin = torch.nn.Linear(80, 24, bias=True)
    config = QuantConfig(group_size=32)
    q = QuantLinear.from_packed(rtn(lin.weight, config).pack(config), lin.bias)
    names = {n for n, _ in q.named_parameters()} | {n for n, _ in q.named_buffers()}
    assert names == {"bias", "qweight", "scales"}
    x = torch.randn(3, 80)
    q(x)
    assert not any(t.is_floating_point() and t.shape == (24, 80) for t in q.state_dict().values())


def test_input_on_another_device_is_refused_before_a_kernel_is_chosen(monkeypatch):
    """A model left on the CPU with its input on a GPU: nn.Linear's refusal, not a kernel handed host
    pointers (the CUDA kernel crashed on them). The meta device stands in for the GPU here."""
    lin = torch.nn.Linear(80, 24)
    config = QuantConfig(group_size=32)
    q = QuantLinear.from_packed(rtn(lin.weight, config).pack(config), lin.bias)
    monkeypatch.setattr("quant_core.modules.choose_kernel", lambda *a: pytest.fail("a kernel was chosen"))
    with pytest.raises(RuntimeError, match=r"weights are on cpu and its input on meta: move the model"):
        q(torch.randn(3, 80, device="meta"))


@pytest.mark.parametrize("wd,scheme,gs", [("int4", "asym", 128), ("nf4", "sym", 64), ("int8", "sym", -1),
                                         ("int3", "asym", 128), ("fp4", "sym", 32)])
def test_forward_equals_dequantized_linear(wd, scheme, gs):
    lin = torch.nn.Linear(576, 40, bias=True)  # 576 = 4.5 groups of 128: partial last group
    config = QuantConfig(weight_dtype=wd, scheme=scheme, group_size=gs)
    packed = rtn(lin.weight, config).pack(config)
    q = QuantLinear.from_packed(packed, lin.bias, kernel="reference")
    x = torch.randn(2, 5, 576)
    expected = torch.nn.functional.linear(x, packed.dequantize(), lin.bias)
    torch.testing.assert_close(q(x), expected, rtol=1e-5, atol=1e-5)
    assert q.kernel.name == "reference"


def test_int8_compute_close_to_float():
    lin = torch.nn.Linear(128, 32)
    cfg = QuantConfig(weight_dtype="int8", group_size=-1)
    packed = rtn(lin.weight, cfg).pack(cfg)
    x = torch.randn(4, 128)
    y_fp = QuantLinear.from_packed(packed, None, "fp32")(x)
    y_i8 = QuantLinear.from_packed(packed, None, "int8")(x)
    assert not torch.equal(y_fp, y_i8)
    assert (y_fp - y_i8).abs().max() < 0.02 * y_fp.abs().max()


def test_quantizing_twice_is_refused(tiny_llama):
    quantize(tiny_llama, QuantConfig(group_size=32), progress=False)
    with pytest.raises(ValueError, match="already quantized"):
        quantize(tiny_llama, QuantConfig(group_size=32), progress=False)


def test_unknown_algorithm_handler_is_clear(tiny_llama, monkeypatch):
    import importlib
    qmod = importlib.import_module("quant_core.quantize")
    monkeypatch.setattr(qmod, "HANDLERS", {"rtn": qmod.HANDLERS["rtn"]})
    with pytest.raises(ConfigError, match="registered: rtn$"):
        quantize(copy.deepcopy(tiny_llama), QuantConfig(algorithm="teq", group_size=32))

"""Calibration speed (issue 19 part 5): no Hessian nobody reads, calibration_dtype='auto', and AWQ's
forwards (statistics and scale search) under the calibration precision."""
from __future__ import annotations

import copy

import pytest
import torch

from quant_core import QuantConfig, cpu_features, quantize
from quant_core.algorithms import gptq as gptq_module
from quant_core.algorithms.hessians import weighted_key
from quant_core.calibration import calibration_dtype_on, forward_precision
from quant_core.testing import tiny_llama_lm


def _batches(n=4, b=2, t=24):
    return [torch.randint(3, 200, (b, t), generator=torch.Generator().manual_seed(i)) for i in range(n)]


@pytest.mark.parametrize("true_sequential", [True, False])
def test_down_proj_gets_only_its_weighted_hessian(monkeypatch, true_sequential):
    """down_proj is alone in its group and solved with its token-weighted Hessian: the plain one
    (the block's largest, intermediate_size squared) is not accumulated; q/k/v's still is."""
    keys = []
    original = gptq_module.block_hessians

    def spy(block, groups, stop):
        hessians = original(block, groups, stop)
        keys.append(set(hessians))
        return hessians

    monkeypatch.setattr(gptq_module, "block_hessians", spy)
    quantize(tiny_llama_lm(layers=1), QuantConfig(algorithm="gptq", group_size=32, true_sequential=true_sequential),
             calibration=_batches(), progress=False, device="cpu")
    seen = set().union(*keys)
    assert weighted_key("mlp.down_proj") in seen and "mlp.down_proj" not in seen
    assert {"self_attn.q_proj", weighted_key("self_attn.v_proj")} <= seen
    monkeypatch.setattr(gptq_module, "block_hessians", original)
    keys.clear()
    monkeypatch.setattr(gptq_module, "block_hessians", spy)
    quantize(tiny_llama_lm(layers=1), QuantConfig(algorithm="gptq", group_size=32, token_weighting=False),
             calibration=_batches(), progress=False, device="cpu")
    assert "mlp.down_proj" in set().union(*keys)  # unweighted: the plain Hessian is the one solved with


@pytest.mark.parametrize("native", [True, False])
def test_auto_calibration_dtype_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch, native):
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: native)
    cfg = QuantConfig(algorithm="gptq", calibration_dtype="auto")
    assert calibration_dtype_on(cfg, "cpu") == ("bf16" if native else "fp32")
    with forward_precision(cfg, "cpu"):
        assert torch.is_autocast_enabled("cpu") is native
    assert calibration_dtype_on(QuantConfig(algorithm="gptq"), "cpu") == ("bf16" if native else "fp32")  # the default
    assert calibration_dtype_on(QuantConfig(algorithm="gptq"), "cuda") == "fp32"  # GPUs calibrate in fp32
    assert calibration_dtype_on(QuantConfig(algorithm="gptq", calibration_dtype="bf16"), "cpu") == "bf16"


@pytest.mark.parametrize("native", [True, False])
def test_a_quantized_model_records_the_calibration_precision_that_ran_not_auto(monkeypatch, native):
    monkeypatch.setattr(cpu_features, "native_bf16", lambda: native)
    model = quantize(tiny_llama_lm(layers=1), QuantConfig(algorithm="gptq", group_size=32), calibration=_batches(),
                     progress=False, device="cpu")
    assert model.config.quantization_config["calibration_dtype"] == ("bf16" if native else "fp32")
    rtn = quantize(tiny_llama_lm(layers=1), QuantConfig(group_size=32), progress=False, device="cpu")
    assert rtn.config.quantization_config["calibration_dtype"] == "auto"  # nothing calibrated, nothing to record


def test_awq_forwards_run_in_the_calibration_precision_and_stay_close_to_fp32():
    ids = torch.cat(_batches())
    reference_model = tiny_llama_lm(layers=1)
    with torch.no_grad():
        reference = reference_model(ids).logits
    errors, autocast_seen = {}, {}
    for dtype in ("fp32", "bf16"):
        model = copy.deepcopy(reference_model)
        seen = []
        hook = model.model.layers[0].mlp.register_forward_hook(
            lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
        # whole batches for every parent: the token sample's per-token probe (a CPU's default, stride 32) runs
        # after the recorded forwards, outside their precision, in fp32
        config = QuantConfig(algorithm="awq", group_size=32, calibration_dtype=dtype, awq_mlp_token_stride=1)
        quantize(model, config, calibration=_batches(), progress=False, device="cpu")
        hook.remove()
        autocast_seen[dtype] = set(seen)
        with torch.no_grad():
            errors[dtype] = (model(ids).logits - reference).pow(2).mean().item()
    # statistics, every grid point of the scale search and the block outputs: all in bf16 when asked
    assert autocast_seen == {"fp32": {False}, "bf16": {True}}
    assert 0 < errors["bf16"] < 1.3 * errors["fp32"], errors


@pytest.mark.parametrize("algorithm", ["gptq", "quantease"])
def test_replaying_the_final_attention_changes_nothing_and_saves_its_calls(monkeypatch, algorithm):
    """Once q/k/v/o are installed, the MLP groups' forwards and the block outputs take the attention's
    recorded outputs: the same codes, bit for bit, with fewer attention calls."""
    from quant_core.algorithms.driver import CalibrationBlock

    cfg = QuantConfig(algorithm=algorithm, group_size=32, **({"num_iter": 2} if algorithm == "quantease" else {}))
    results, calls = {}, {}
    for replay in (True, False):
        if not replay:
            monkeypatch.setattr(CalibrationBlock, "replay_module", lambda self, name, projection=None: None)
        model = tiny_llama_lm(layers=2)
        counted = []
        for layer in model.model.layers:
            layer.self_attn.q_proj.register_forward_hook(lambda *_: counted.append("attention"))
            layer.mlp.gate_proj.register_forward_hook(lambda *_: counted.append("mlp"))
        quantize(model, cfg, calibration=_batches(), progress=False, device="cpu")
        calls[replay] = (counted.count("attention"), counted.count("mlp"))
        results[replay] = {n: b.clone() for n, b in model.state_dict().items()}
        assert all("forward" not in layer.self_attn.__dict__ for layer in model.model.layers)  # given back
    assert results[True].keys() == results[False].keys()
    for name in results[True]:
        assert torch.equal(results[True][name], results[False][name]), name
    # 2 blocks x 4 batches. q/k/v computed 5 times (q/k/v, o, gate/up, down, outputs) -> 2: gate/up's forward
    # projects o_proj's recorded inputs (but for the first batch, which checks that), the last two replay.
    # gate/up computed 2 times (down, outputs) -> 1: the outputs project down_proj's inputs (first batch: checked)
    assert calls[False] == (2 * 4 * 5, 2 * 4 * 2) and calls[True] == (2 * (4 * 2 + 1), 2 * (4 + 1)), calls


class _Attention(torch.nn.Module):
    def __init__(self, doubles: bool):
        super().__init__()
        self.inner, self.o = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        self.doubles, self.calls = doubles, 0

    def forward(self, x):
        self.calls += 1
        out = self.o(self.inner(x))
        return (2 * out if self.doubles else out), None


class _Block(torch.nn.Module):
    def __init__(self, doubles: bool):
        super().__init__()
        self.attn = _Attention(doubles)

    def forward(self, h):
        return self.attn(h)[0] + h


@pytest.mark.parametrize("doubles", [False, True])
def test_projection_shortcut_is_checked_on_the_first_batch(doubles):
    """An attention whose output is not its projection's (here doubled) gets no shortcut."""
    from quant_core.algorithms.module_replay import ModuleReplay

    block = _Block(doubles)
    hidden = [torch.randn(2, 3, 4) for _ in range(3)]
    with torch.no_grad():
        expected = [block(h) for h in hidden]
        replay = ModuleReplay(block, block.attn, hidden, projection=block.attn.o)
        assert all(torch.equal(block(h), e) for h, e in zip(hidden, expected))  # records o's inputs
        replay.projection_final()
        block.attn.calls = 0
        for _ in range(2):  # projects (or, when that differs, computes) once, then replays
            assert all(torch.equal(block(h), e) for h, e in zip(hidden, expected))
        assert block.attn.calls == (3 if doubles else 1)
        other = torch.randn(2, 3, 4)  # not a calibration batch: computed as usual
        torch.testing.assert_close(block(other), block.attn.o(block.attn.inner(other)) * (2 if doubles else 1) + other)
        replay.close()
    assert "forward" not in block.attn.__dict__

"""SignRound started from a layer solver (``signround_start``): the untrained start is the solver's result
bit for bit, a trained block ends at or below the start's output error, the block keeps the best of its
candidates, and the setting is checked at the config."""
import pytest
from signround_support import first_block, train_to_far_edge
import torch

from quant_core import QuantConfig
from quant_core.algorithms import signround
from quant_core.algorithms.gptq import gptq
from quant_core.algorithms.quantease import quantease
from quant_core.algorithms.rtn import rtn
from quant_core.algorithms.signround import LearnedRounding, block_error, float_targets, signround_block
from quant_core.algorithms.signround_start import EDGE, solver_starts
from quant_core.errors import ConfigError

FORMATS = [("int4_fullrange", "sym", 32), ("int4_fullrange", "asym", 32), ("int4_clip", "sym", -1),
           ("int3", "asym", 32), ("int3", "sym", 32), ("int2", "asym", 32), ("int8", "asym", -1)]
SOLVERS = {"gptq": gptq, "quantease": quantease}


def config_for(start, dtype="int3", scheme="asym", group_size=32, **settings) -> QuantConfig:
    settings = {"signround_steps": 40, "signround_batch_windows": 2, **settings}
    return QuantConfig(algorithm="signround", weight_dtype=dtype, scheme=scheme, group_size=group_size,
                       signround_start=start, **settings)


def weight_and_hessian(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(24, 80, generator=g)  # 80 = 2 groups of 32 and a partial one
    x = torch.randn(400, 80, generator=g) * (3 * torch.rand(80, generator=g))  # uneven input scales
    return w, 2 * x.T @ x / 400


@pytest.mark.parametrize("offset,mse_clip", [("centre", False), ("centre", True), ("nearest", False)])
@pytest.mark.parametrize("start", ["gptq", "quantease"])
@pytest.mark.parametrize("dtype,scheme,group_size", FORMATS)
def test_the_untrained_start_is_the_solvers_result_bit_for_bit(dtype, scheme, group_size, start, offset, mse_clip):
    w, h = weight_and_hessian(5)
    config = config_for(start, dtype, scheme, group_size, mse_clip=mse_clip, signround_start_offset=offset)
    solved = SOLVERS[start](w, h, config)
    assert not torch.equal(solved.codes, rtn(w, config).codes)  # a start that RTN's parameters would not give
    result = LearnedRounding(w, config, solved).result()
    assert torch.equal(result.codes, solved.codes) and torch.equal(result.scales, solved.scales.float())
    assert (result.zeros is None) == (solved.zeros is None)
    if solved.zeros is not None:
        assert torch.equal(result.zeros, solved.zeros.float())


def test_the_nearest_start_leaves_weights_where_the_solver_kept_rtns_code():
    """Where the start's code is the one ``W / s`` rounds to, no offset; elsewhere the weight starts just
    inside its code's interval, on the side of ``W / s``; "centre" puts every weight on its code."""
    w, h = weight_and_hessian(6)
    nearest = config_for("gptq", signround_start_offset="nearest")
    solved = gptq(w, h, nearest)
    rounding = LearnedRounding(w, nearest, solved)
    scale, zero = rounding.stored_qparams()
    at = rounding.groups / scale.unsqueeze(-1) + zero.unsqueeze(-1)
    moved = rounding.start_offset != 0
    assert 0 < moved.float().mean() < 0.5
    code = (at + rounding.start_offset).round()
    assert torch.equal(moved[:, :2], ((at - code).abs() > EDGE)[:, :2])  # the full groups (the last is padded)
    assert bool((moved & (code != at.round())).any())  # codes the solver changed from RTN's are among them
    torch.testing.assert_close((at + rounding.start_offset - code).abs()[moved], torch.full_like(at[moved], EDGE))
    centre = LearnedRounding(w, config_for("gptq", signround_start_offset="centre"), solved)
    x = centre.groups / scale.unsqueeze(-1) + zero.unsqueeze(-1) + centre.start_offset
    torch.testing.assert_close(x[:, :2], x[:, :2].round(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("start", ["gptq", "quantease"])
@pytest.mark.parametrize("dtype,scheme", [("int3", "asym"), ("int4_fullrange", "sym")])
def test_a_trained_block_ends_at_or_below_its_starts_output_error(model_and_inputs, start, dtype, scheme):
    model, inputs = model_and_inputs
    block = first_block(model, inputs, config_for(start, dtype, scheme))
    results, errors = signround_block(block)
    assert set(errors) == {"rtn", "start", "signround"}
    assert errors["start"] < errors["rtn"], errors  # the solver's start is the better one here
    linears = {name: block.module.get_submodule(name) for name in results}
    installed = block_error(block, {n: r.pack(block.config).dequantize(linears[n].weight.dtype)
                                    for n, r in results.items()}, float_targets(block))
    assert installed == min(errors.values()) <= errors["start"], (installed, errors)


def test_the_block_keeps_the_start_when_training_ends_worse(model_and_inputs, monkeypatch):
    monkeypatch.setattr(signround, "train", train_to_far_edge)
    model, inputs = model_and_inputs
    block = first_block(model, inputs, config_for("gptq"))
    starts = solver_starts(block)
    results, errors = signround_block(block)
    assert errors["start"] < min(errors["rtn"], errors["signround"]), errors
    for name, result in results.items():
        assert torch.equal(result.codes, starts[name].codes)


@pytest.mark.parametrize("settings,says", [
    (dict(algorithm="signround", signround_start="awq"), "signround_start"),
    (dict(algorithm="gptq", signround_start="gptq"), "setting of algorithm='signround'"),
    (dict(algorithm="signround", signround_start="gptq", act_order=True), "act_order"),
    (dict(algorithm="signround", signround_start="gptq", signround_start_offset="edge"), "signround_start_offset"),
])
def test_bad_start_settings_fail_at_the_config(settings, says):
    with pytest.raises(ConfigError, match=says):
        QuantConfig(**settings)


def test_rtn_is_the_default_start():
    assert QuantConfig(algorithm="signround").signround_start == "rtn"

"""AWQ's ridge toward unseen inputs (awq_scale_ridge, issue 16): the search minimises exactly the
penalised objective, off is unchanged, and the penalty moves the choice toward small |dW|^2."""
import pytest
import torch
from torch import nn

from quant_core import QuantConfig
from quant_core.algorithms.awq import search_scales, unseen_input_factor
from quant_core.algorithms.equalize import ScaleGroup, normalized_scales
from quant_core.algorithms.input_stats import InputStats
from quant_core.algorithms.rounding import fake_quantize
from quant_core.primitives import output_error


def lone_linear_group(seed=0):
    """One linear after a norm, inputs with a few loud channels: AWQ's scales pay on the calibration inputs."""
    torch.manual_seed(seed)
    lin = nn.Linear(128, 32, bias=False)
    norm = nn.LayerNorm(128)
    x = torch.randn(512, 128) * torch.where(torch.arange(128) < 6, 12.0, 1.0)
    stats = InputStats(128)
    stats.add(x)
    return ScaleGroup(["lin"], [lin], prev=norm, parent=None), stats


def candidates(group, stats, config):
    """Every scale vector the search tries, then s = 1 (what it falls back to)."""
    w = group.weight()
    x_mean = stats.abs_mean
    groups = w.abs().reshape(w.shape[0], -1, config.group_size)
    w_mean = (groups / (groups.amax(-1, keepdim=True) + 1e-6)).reshape(w.shape).mean(0)
    rs = [i / config.awq_n_grid for i in range(config.awq_n_grid)]
    return [normalized_scales(x_mean.pow(r) / (w_mean.pow(1 - r) + 1e-4)) for r in rs] + [torch.ones(128)]


def penalised(group, stats, s, ridge, config):
    w = group.weight()
    dw = w - fake_quantize(w * s, config) / s
    return output_error(dw, stats.H).item() + ridge * stats.H.trace().item() / 128 * dw.pow(2).sum().item()


@pytest.mark.parametrize("ridge", [0.0, 0.3, 3.0])
def test_the_search_picks_the_minimum_of_the_penalised_objective(ridge):
    group, stats = lone_linear_group()
    config = QuantConfig(algorithm="awq", weight_dtype="int4", group_size=32, scale_dtype="fp32", awq_scale_ridge=ridge)
    chosen, _ = search_scales(group, stats, config)
    costs = [penalised(group, stats, s, ridge, config) for s in candidates(group, stats, config)]
    assert penalised(group, stats, chosen, ridge, config) == pytest.approx(min(costs), rel=1e-6)


def test_a_larger_ridge_never_chooses_a_larger_weight_error():
    group, stats = lone_linear_group(seed=1)
    w = group.weight()
    fro = []
    for ridge in (0.0, 0.1, 1.0, 100.0):
        config = QuantConfig(algorithm="awq", weight_dtype="int4", group_size=32, scale_dtype="fp32",
                             awq_scale_ridge=ridge)
        s, _ = search_scales(group, stats, config)
        fro.append((w - fake_quantize(w * s, config) / s).pow(2).sum().item())
    assert all(b <= a * (1 + 1e-6) for a, b in zip(fro, fro[1:])), fro
    assert fro[-1] < fro[0]  # the penalty changed the choice here: the check above is not vacuous


def test_the_factor_is_one_when_off_and_counts_the_isotropic_part():
    torch.manual_seed(2)
    dw, x = torch.randn(4, 16), torch.randn(64, 16)
    H = x.T @ x
    assert unseen_input_factor(dw, H, 0.0) == 1.0
    expected = 1 + 0.5 * H.trace() / 16 * dw.pow(2).sum() / output_error(dw, H)
    assert unseen_input_factor(dw, H, 0.5) == pytest.approx(expected.item(), rel=1e-5)
    assert unseen_input_factor(torch.zeros(4, 16), H, 0.5) == 1.0  # no change, no error either way


def test_the_field_is_awqs_own_and_left_to_the_run_by_default():
    assert QuantConfig().awq_scale_ridge is None  # quant_core/awq_search_auto.py decides it (test_awq_search_auto.py)
    with pytest.raises(ValueError, match="awq_scale_ridge"):
        QuantConfig(algorithm="gptq", awq_scale_ridge=1.0)
    with pytest.raises(ValueError):
        QuantConfig(algorithm="awq", awq_scale_ridge=-1.0)


def test_a_version_6_checkpoint_loads_with_the_options_off_as_it_ran():
    awq = QuantConfig.from_dict({"version": 6, "algorithm": "awq"})
    teq = QuantConfig.from_dict({"version": 6, "algorithm": "teq"})
    assert awq.awq_scale_ridge == 0.0
    assert (teq.teq_scale_ridge, teq.teq_scale_check) == (0.0, "all")


def test_a_version_11_awq_checkpoint_loads_with_the_ridge_it_ran_with():
    assert QuantConfig.from_dict({"version": 11, "algorithm": "awq"}).awq_scale_ridge == 0.0
    assert QuantConfig.from_dict({"version": 12, "algorithm": "awq"}).awq_scale_ridge == 0.3
    assert QuantConfig.from_dict({"version": 11, "algorithm": "awq", "awq_scale_ridge": 0.1}).awq_scale_ridge == 0.1


def test_a_lone_linear_search_computes_each_ratios_output_error_once(monkeypatch):
    from quant_core.algorithms import awq
    group, stats = lone_linear_group()
    config = QuantConfig(algorithm="awq", weight_dtype="int4", group_size=32, scale_dtype="fp32", awq_scale_ridge=0.3)
    calls, real = [], awq.output_error
    monkeypatch.setattr(awq, "output_error", lambda dw, H: calls.append(1) or real(dw, H))
    _, errors = search_scales(group, stats, config)
    assert len(calls) == config.awq_n_grid + 1  # every ratio and RTN, each once: its cost and its factor share it

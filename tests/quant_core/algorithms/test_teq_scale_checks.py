"""TEQ's guards against scales that fit only the calibration sample (issue 16): the held-out check
(teq_scale_check) and the isotropic ridge (teq_scale_ridge)."""
import pytest
import torch
from torch import nn

from quant_core import QuantConfig
from quant_core.algorithms.equalize import ScaleGroup
from quant_core.algorithms.input_stats import InputStats
from quant_core.algorithms.rounding import fake_quantize
from quant_core.algorithms.teq import checking_hessian, train_scales
from quant_core.primitives import output_error


def group_and_stats(train_rows, other_rows, seed=0):
    """A lone linear whose statistics are set by hand: TEQ trains on ``train_rows`` (the sample),
    ``H`` counts them and ``other_rows``."""
    torch.manual_seed(seed)
    lin = nn.Linear(train_rows.shape[1], 32, bias=False)
    stats = InputStats(train_rows.shape[1])
    stats.add(torch.cat([train_rows, other_rows]))
    stats.sample = train_rows.clone()
    return ScaleGroup(["lin"], [lin], prev=nn.LayerNorm(train_rows.shape[1])), stats


def loud(n, channels, seed, quiet=slice(0, 0)):
    x = torch.randn(n, 128, generator=torch.Generator().manual_seed(seed))
    x[:, channels] *= 15
    x[:, quiet] *= 0.01
    return x


def test_the_held_out_hessian_counts_exactly_the_rows_teq_did_not_train_on():
    stats = InputStats(16, keep_tokens=40, seed=3)
    x = torch.randn(300, 16)
    stats.add(x[:120])
    stats.add(x[120:])
    kept = {tuple(r.tolist()) for r in stats.sample}
    rest = torch.stack([r for r in x if tuple(r.tolist()) not in kept])
    assert rest.shape[0] == 260
    held = checking_hessian(stats, QuantConfig(algorithm="teq", teq_scale_check="held_out"))
    torch.testing.assert_close(held, rest.T @ rest, atol=1e-3, rtol=1e-4)
    assert checking_hessian(stats, QuantConfig(algorithm="teq")) is stats.H


def test_scales_fitted_to_the_sample_alone_fall_back_to_rtn_under_the_held_out_check():
    # trained on rows loud in channels 0-5 and silent in 8-13 (whose scales it may then shrink for free);
    # the other calibration rows are loud in 8-13
    group, stats = group_and_stats(loud(512, slice(0, 6), 1, quiet=slice(8, 14)), loud(128, slice(8, 14), 2))
    base = dict(algorithm="teq", weight_dtype="int4", group_size=32, scale_dtype="fp32", teq_steps=80, teq_lr=3e-2,
                teq_scale_ridge=0.0)  # the check alone decides here
    s_all, info_all = train_scales(group, stats, QuantConfig(**base))
    s_held, info_held = train_scales(group, stats, QuantConfig(**base, teq_scale_check="held_out"))
    assert not torch.allclose(s_all, torch.ones_like(s_all))  # all tokens: the trained scales win
    assert info_all["teq_error"] < info_all["rtn_error"]
    assert info_held["teq_error"] >= info_held["rtn_error"]  # on the rows it never saw they lose ...
    torch.testing.assert_close(s_held, torch.ones_like(s_held))  # ... so RTN's scales are kept


def test_the_ridge_is_counted_in_the_check_and_keeps_scales_nearer_one():
    x = loud(640, slice(0, 6), 4)
    group, stats = group_and_stats(x[:512], x[512:])
    base = dict(algorithm="teq", weight_dtype="int4", group_size=32, scale_dtype="fp32", teq_steps=80, teq_lr=3e-2)
    spread = {}
    for ridge in (0.0, 3.0):
        s, info = train_scales(group, stats, QuantConfig(**base, teq_scale_ridge=ridge))
        H = stats.H + ridge * stats.H.trace() / 128 * torch.eye(128)
        w = group.weight()
        assert info["rtn_error"] == pytest.approx(output_error(w - fake_quantize(w, QuantConfig(**base)), H).item(),
                                                  rel=1e-4)
        spread[ridge] = s.log().abs().mean().item()
    assert spread[0.0] > 0  # trained scales were kept without the ridge: the comparison is not vacuous
    assert spread[3.0] < spread[0.0], spread


def test_the_defaults_and_the_fields_are_teqs_own():
    config = QuantConfig()
    assert config.teq_scale_ridge == 0.3 and config.teq_scale_check == "all"  # ridge 0.3 since session 8
    with pytest.raises(ValueError, match="teq_scale_check"):
        QuantConfig(algorithm="awq", teq_scale_check="held_out")
    with pytest.raises(ValueError):
        QuantConfig(algorithm="teq", teq_scale_check="sometimes")

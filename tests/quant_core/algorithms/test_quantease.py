"""QuantEase: exact coordinate steps, blocked updates equal to unblocked ones, a loss that never
rises, every format below RTN, GPTQ->QuantEase never above GPTQ, act_order, dead inputs."""
import pytest
import torch

from quant_core import QuantConfig
from quant_core.algorithms.coordinate_descent import CoordinateDescent
from quant_core.algorithms.gptq import gptq
from quant_core.algorithms.hessians import Hessian
from quant_core.algorithms.quantease import _initial_qparams, gptq_quantease, quantease
from quant_core.algorithms.rtn import rtn
from quant_core.errors import ConfigError
from quant_core.primitives import output_error

SETTINGS = [("int4_fullrange", "sym", 64), ("int4_fullrange", "asym", 64), ("int4_clip", "sym", 64),
            ("int4_fullrange", "asym", -1), ("int3", "asym", 64), ("int2", "asym", 64),
            ("nf4", "sym", 64), ("fp4_e2m1", "sym", 64), ("int8", "sym", 64)]


def loss(w, result, config, h):
    return output_error(w - result.pack(config).dequantize(), h).item()


def start_state(w, h, config, block_size=64):
    k = w.shape[1]
    bounds = [(a, min(a + 64, k)) for a in range(0, k, 64)]
    scales, zeros = _initial_qparams(w, bounds, config, None)
    return CoordinateDescent(w, h, config.format, bounds, scales, zeros, w, block_size)


@pytest.mark.parametrize("dtype,scheme,group_size", SETTINGS)
def test_quantease_output_error_below_rtn_in_every_format(layer, dtype, scheme, group_size):
    w, _, h = layer
    cfg = QuantConfig(algorithm="quantease", weight_dtype=dtype, scheme=scheme, group_size=group_size, num_iter=8)
    assert loss(w, quantease(w, h, cfg), cfg, h) < 0.8 * loss(w, rtn(w, cfg), cfg, h)


@pytest.mark.parametrize("dtype,scheme,group_size", SETTINGS)
def test_gptq_quantease_never_above_gptq(layer, dtype, scheme, group_size):
    w, _, h = layer
    cfg = QuantConfig(algorithm="gptq_quantease", weight_dtype=dtype, scheme=scheme, group_size=group_size,
                      num_iter=6, act_order=True)
    ours, start = loss(w, gptq_quantease(w, h, cfg), cfg, h), loss(w, gptq(w, h, cfg), cfg, h)
    assert ours <= start
    if dtype != "int8":  # int8's GPTQ error is already near the floor
        assert ours < 0.99 * start


def test_a_coordinate_step_is_the_best_grid_point_of_its_column(layer):
    """Each column's update is exact: no other grid point of that column lowers the loss (checked
    on the last column of a sweep, the one no later update has moved away from its optimum)."""
    w, _, h = layer
    cfg = QuantConfig(weight_dtype="int3", scheme="asym", group_size=64)
    cd = start_state(w, h, cfg)
    cd.sweep()
    j, s, z = 191, cd.scales[:, 2], cd.zeros[:, 2]
    base = ((w - cd.q) @ h * (w - cd.q)).sum(1)
    for code in range(8):
        trial = cd.q.clone()
        trial[:, j] = (code - z) * s
        assert bool((((w - trial) @ h * (w - trial)).sum(1) >= base - 1e-4 * base.abs()).all())


def test_blocked_updates_keep_the_gradient_exact_and_match_small_blocks(layer):
    w, _, h = layer
    cfg = QuantConfig(group_size=64)
    big, small = start_state(w, h, cfg, block_size=64), start_state(w, h, cfg, block_size=8)
    for cd in (big, small):
        cd.sweep()
        cd.sweep(quantize=False)
        cd.sweep()
        torch.testing.assert_close(cd.g, (w - cd.q) @ cd.hn, rtol=1e-4, atol=1e-4)
    assert (big.q != small.q).float().mean() < 1e-3


def test_quantized_sweeps_and_scale_refits_never_raise_the_loss(layer):
    w, _, h = layer
    for dtype, scheme, gs in SETTINGS:
        cfg = QuantConfig(weight_dtype=dtype, scheme=scheme, group_size=gs)
        cd = start_state(w, h, cfg)
        cd.sweep()
        before = cd.row_errors().sum()
        for step in (cd.sweep, lambda: cd.refit_scales(torch.float16), cd.sweep):
            step()
            after = cd.row_errors().sum()
            assert after <= before * (1 + 1e-5), (dtype, scheme, gs)
            before = after


def test_the_scale_step_is_the_exact_minimum_over_the_scale(layer):
    w, _, h = layer
    cfg = QuantConfig(group_size=64, scale_dtype="fp32")
    cd = start_state(w, h, cfg)
    cd.scale_dtype = torch.float32
    cd.sweep()
    cd.on_grid = True
    q0, s0 = cd.q.clone(), cd.scales[:, 1].clone()
    cd._rescale_group(1)
    units = q0[:, 64:128] / s0[:, None]
    for factor in (0.97, 0.99, 1.01, 1.03):  # any other scale of that group is worse, row by row
        trial = cd.q.clone()
        trial[:, 64:128] = units * (cd.scales[:, 1:2] * factor)
        assert bool((((w - trial) @ h * (w - trial)).sum(1) >= cd.row_errors() * (1 - 1e-5)).all())
    torch.testing.assert_close(cd.g, (w - cd.q) @ cd.hn, rtol=1e-4, atol=1e-4)


def test_act_order_records_groups_and_the_packed_weight_is_the_solution(layer):
    w, x, h = layer
    cfg = QuantConfig(algorithm="quantease", group_size=64, act_order=True, num_iter=4)
    result = quantease(w, h, cfg)
    assert result.g_idx is not None and torch.bincount(result.g_idx.long()).tolist() == [64, 64, 64]
    assert not torch.equal(result.g_idx.long(), torch.arange(192) // 64)
    per_channel = quantease(w, h, QuantConfig(algorithm="quantease", group_size=-1, act_order=True, num_iter=2))
    assert per_channel.g_idx is None


def test_dead_inputs_get_exact_zero_weights(layer):
    w, x, _ = layer
    x = x.clone()
    x[:, 5] = 0
    h = Hessian(x.shape[1])
    h.add(x)
    for dtype, scheme in (("int4_fullrange", "sym"), ("int3", "asym"), ("nf4", "sym"), ("fp4_e2m1", "sym")):
        cfg = QuantConfig(algorithm="quantease", weight_dtype=dtype, scheme=scheme, group_size=64, num_iter=3)
        assert bool((quantease(w, h.matrix, cfg).pack(cfg).dequantize()[:, 5] == 0).all())


def test_hessian_shape_mismatch_is_refused(layer):
    w, _, h = layer
    with pytest.raises(ValueError, match="does not match"):
        quantease(w, h[:10, :10], QuantConfig(algorithm="quantease"))


def test_settings_belong_to_their_algorithms():
    assert QuantConfig(algorithm="gptq_quantease", num_iter=3, damp_percent=0.05).num_iter == 3
    assert QuantConfig(algorithm="quantease", act_order=True, outlier_fraction=0.01).outlier_fraction == 0.01
    with pytest.raises(ConfigError, match="num_iter=3 is a setting of algorithm='quantease' or 'gptq_quantease'"):
        QuantConfig(algorithm="gptq", num_iter=3)
    with pytest.raises(ConfigError, match="outlier_fraction=0.01 is a setting of algorithm='quantease'"):
        QuantConfig(algorithm="gptq_quantease", outlier_fraction=0.01)
    with pytest.raises(ConfigError, match="damp_percent"):
        QuantConfig(algorithm="quantease", damp_percent=0.05)
    with pytest.raises(ConfigError, match="outlier_structure"):
        QuantConfig(algorithm="quantease", outlier_structure="rows")

"""AWQ's scale search stops a ratio's batch sum early once it cannot win: the same choice as the plain loop."""
import random

import pytest
import torch

from quant_core import QuantConfig
from quant_core.algorithms import awq
from quant_core.algorithms.awq import record_parent_inputs, search_scales, unseen_input_factor
from quant_core.algorithms.equalize import normalized_scales, scale_groups
from quant_core.algorithms.pruned_argmin import pruned_argmin
from quant_core.algorithms.rounding import fake_quantize
from quant_core.blocks import architecture_of, capture_first_block_inputs, decoder_layers
from quant_core.calibration import statistics_rows

from test_awq import block_stats, ids, tiny


def plain_search(group, stats, config):
    """The search as it was before the pruning (session 6): every ratio on every recorded batch."""
    w = group.weight()
    x_mean, w_mean = group.reduce_mean(stats.abs_mean), group.reduce_mean(awq._w_mean(w, config.group_size))
    originals = [lin.weight.detach().clone() for lin in group.linears]
    splits = [lin.out_features for lin in group.linears]
    outputs = lambda: [awq._parent_output(group, b, config) for b in range(len(group.parent_inputs))]  # noqa: E731
    ref = outputs()

    def error(w_eff):
        for lin, part in zip(group.linears, w_eff.split(splits)):
            lin.weight.copy_(part.to(lin.weight.dtype))
        err = sum(statistics_rows(o.float() - r.float(), config.calibration_skip_tokens).pow(2).sum().item()
                  for o, r in zip(outputs(), ref))
        return err if config.awq_scale_ridge == 0 else err * unseen_input_factor(w - w_eff, stats.H,
                                                                                config.awq_scale_ridge)
    best_err, best_s = float("inf"), None
    with torch.no_grad():
        for i in range(config.awq_n_grid):
            r = i / config.awq_n_grid
            s = normalized_scales(x_mean.pow(r) / (w_mean.pow(1 - r) + 1e-4))
            s_in = group.expand(s)
            err = error(fake_quantize(w * s_in, config) / s_in)
            if err < best_err:
                best_err, best_s = err, s
        if error(fake_quantize(w, config)) <= best_err:
            best_s = torch.ones(group.n_scales)
        for lin, original in zip(group.linears, originals):
            lin.weight.copy_(original)
    return best_s


@pytest.mark.parametrize("model_type,ridge", [("llama", 0.0), ("llama", 0.3), ("qwen2", 0.0), ("opt", 0.0)])
def test_pruned_search_chooses_the_scales_of_the_plain_loop(model_type, ridge, monkeypatch):
    model = tiny(model_type)
    inputs = capture_first_block_inputs(model, list(ids(n=8, seed=3).split(2)), "cpu")  # 4 batches
    block = decoder_layers(model)[0]
    config = QuantConfig(algorithm="awq", weight_dtype="int4", group_size=32, awq_scale_ridge=ridge)
    groups = scale_groups(block, architecture_of(model), model.config)
    with record_parent_inputs(groups, 4):
        stats = block_stats(block, inputs, groups)
    calls = []
    real = awq._parent_output
    monkeypatch.setattr(awq, "_parent_output", lambda g, b, c: calls.append(b) or real(g, b, c))
    searched = saved = 0
    for g in groups:
        if g.foldable and g.parent is not None:
            assert len(g.parent_inputs) == 4
            calls.clear()
            s, errors = search_scales(g, stats[g.names[0]], config)
            assert len(errors) == config.awq_n_grid
            assert len(calls) <= 4 + 4 * (config.awq_n_grid + 1)  # the reference, then at most every forward
            saved += 4 + 4 * (config.awq_n_grid + 1) - len(calls)
            assert torch.equal(s, plain_search(g, stats[g.names[0]], config))
            searched += 1
    assert searched >= 1 and saved > 0, (searched, saved)  # the pruning ran: the equality is not vacuous


def test_pruned_argmin_is_the_plain_argmin_and_skips_parts():
    rng = random.Random(0)
    skipped = 0
    for trial in range(300):
        n_keys, n_parts = rng.randint(1, 8), rng.randint(1, 6)
        pool = [0.0, 0.5, 1.0] if trial % 3 == 0 else None  # many ties
        parts = {(k, i): (rng.choice(pool) if pool else rng.random() * (k + 1)) for k in range(n_keys)
                 for i in range(n_parts)}
        factors = {k: rng.choice([1.0, 1.5]) for k in range(n_keys)}
        keys = rng.sample(range(n_keys), n_keys)
        totals = {k: sum(parts[k, i] for i in range(n_parts)) * factors[k] for k in keys}
        expected = min(keys, key=lambda k: (totals[k], keys.index(k)))
        calls = []
        best, costs = pruned_argmin(keys, n_parts, lambda k, i: calls.append((k, i)) or parts[k, i], factors.get)
        assert best == expected and costs[best] == totals[best]
        assert all(costs[k] == totals[k] or costs[k] > totals[best] for k in keys)
        assert len(set(calls)) == len(calls)  # no part twice
        skipped += n_keys * n_parts - len(calls)
    assert skipped > 0  # the pruning did something


def test_pruned_argmin_refuses_nothing_to_choose_from():
    with pytest.raises(ValueError):
        pruned_argmin([], 3, lambda k, i: 0.0)

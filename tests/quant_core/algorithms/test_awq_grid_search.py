"""AWQ's coarse-to-fine ratio search (awq_grid_step): the full grid's choice where the error is unimodal."""
import math
import random

import pytest
import torch

from quant_core import QuantConfig
from quant_core.algorithms import awq
from quant_core.algorithms.awq import record_parent_inputs, search_scales
from quant_core.algorithms.equalize import scale_groups
from quant_core.algorithms.grid_search import coarse_points, coarse_to_fine
from quant_core.algorithms.pruned_argmin import pruned_argmin
from quant_core.blocks import architecture_of, capture_first_block_inputs, decoder_layers

from test_awq import block_stats, ids, tiny

OFF_GRID = "rtn"


def unimodal_parts(rng: random.Random, n: int, n_parts: int) -> dict:
    """Per-part costs whose sums fall strictly to one minimum at a random point, then rise (no ties)."""
    low = rng.randrange(n)
    totals = [1.0] * n
    for i in range(low + 1, n):  # random positive steps away from the minimum, on both sides
        totals[i] = totals[i - 1] + rng.uniform(0.01, 2.0)
    for i in range(low - 1, -1, -1):
        totals[i] = totals[i + 1] + rng.uniform(0.01, 2.0)
    parts = {}
    for key, total in enumerate(totals):
        shares = [rng.random() + 0.1 for _ in range(n_parts)]
        parts.update({(key, p): total * share / sum(shares) for p, share in enumerate(shares)})
    return parts


def stage_search(parts: dict, n_parts: int, calls: list, rank):
    return lambda keys, incumbent: pruned_argmin(
        keys, n_parts, lambda k, p: calls.append((k, p)) or parts[k, p], incumbent=incumbent, rank=rank)


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5, 8])
def test_coarse_to_fine_finds_the_full_grids_minimum_where_the_error_is_unimodal(step):
    rng = random.Random(step)
    rank = lambda k: -1 if k == OFF_GRID else k  # noqa: E731
    for _ in range(200):
        n, n_parts = rng.randint(1, 40), rng.randint(1, 5)
        parts = unimodal_parts(rng, n, n_parts)
        rtn_total = rng.choice([0.5, 1e9])  # the off-grid key wins, or loses
        parts.update({(OFF_GRID, p): rtn_total / n_parts for p in range(n_parts)})
        keys = [OFF_GRID, *range(n)]
        totals = {k: sum(parts[k, p] for p in range(n_parts)) for k in keys}
        full = min(keys, key=lambda k: (totals[k], rank(k)))
        calls = []
        best, costs = coarse_to_fine(n, step, [OFF_GRID], stage_search(parts, n_parts, calls, rank))
        assert best == full and costs[best] == totals[best]
        assert len(set(calls)) == len(calls)  # no part twice across the stages
        scored = {k for k, _ in calls}
        if rtn_total > 1:  # refining around the grid's best: the scored points are the coarse ones plus 2 a stage
            assert len(scored) <= 1 + len(coarse_points(n, step)) + 2 * math.ceil(math.log2(step)) if step > 1 \
                else len(scored) == n + 1


def exact_stage(errors: list, scored: list):
    """A stage that scores every key it is given (no pruning), ties to the lower key."""
    def search(keys, incumbent):
        scored.extend(keys)
        found = {k: errors[k] for k in keys}
        candidates = [(cost, k) for k, cost in found.items()] + ([incumbent[::-1]] if incumbent else [])
        return min(candidates)[1], found
    return search


def test_coarse_to_fine_at_step_4_scores_10_of_20_ratios_and_step_1_every_ratio():
    errors, scored = [abs(k - 13) for k in range(20)], []
    assert coarse_to_fine(20, 4, [], exact_stage(errors, scored))[0] == 13
    assert sorted(scored) == [0, 4, 8, 10, 11, 12, 13, 14, 16, 19]  # coarse 0,4,..,16,19; then 12 +-2; then 12 +-1
    scored.clear()
    assert coarse_to_fine(20, 1, [], exact_stage(errors, scored))[0] == 13
    assert sorted(scored) == list(range(20))
    with pytest.raises(ValueError):
        coarse_to_fine(20, 0, [], exact_stage(errors, scored))


def test_coarse_to_fine_may_stop_at_a_local_minimum_where_the_error_is_not_unimodal():
    errors = [5, 4, 3, 2.5, 3, 3, 3, 3, 0.0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]  # a narrow dip at 8
    assert coarse_to_fine(20, 4, [], exact_stage(errors, []))[0] == 8  # 8 is on the coarse grid: found
    errors[8], errors[9] = 3, 0.0
    assert coarse_to_fine(20, 4, [], exact_stage(errors, []))[0] == 3  # the dip at 9 is missed: the setting's price


def coarse_and_full_searches(model_type: str, monkeypatch) -> list[tuple]:
    """For every foldable group of a tiny model's first block, on one batch (no pruning: every scored
    ratio's error is exact): (full scales, full errors, coarse scales, coarse errors, parent forwards full / coarse)."""
    model = tiny(model_type)
    inputs = capture_first_block_inputs(model, list(ids(n=8, seed=3).split(2)), "cpu")
    block = decoder_layers(model)[0]
    full_config = QuantConfig(algorithm="awq", weight_dtype="int4", group_size=32, awq_grid_step=1,
                              awq_scale_ridge=0.3)
    coarse_config = full_config.model_copy(update={"awq_grid_step": 4})
    groups = scale_groups(block, architecture_of(model), model.config)
    with record_parent_inputs(groups, 1):
        stats = block_stats(block, inputs, groups)
    calls, real = [], awq._parent_output
    monkeypatch.setattr(awq, "_parent_output", lambda g, b, c: calls.append(b) or real(g, b, c))
    found = []
    for g in (g for g in groups if g.foldable):
        calls.clear()
        full = search_scales(g, stats[g.names[0]], full_config)
        n_full = len(calls)
        calls.clear()
        found.append((*full, *search_scales(g, stats[g.names[0]], coarse_config), n_full, len(calls)))
    return found


def test_awq_search_at_step_4_chooses_the_full_grids_scales_when_its_errors_are_unimodal(monkeypatch):
    compared = 0
    for model_type in ["llama", "qwen2", "opt"]:
        for s_full, errors, s_coarse, coarse_errors, n_full, n_coarse in coarse_and_full_searches(model_type,
                                                                                                  monkeypatch):
            scored = [i for i, e in enumerate(coarse_errors) if not math.isnan(e)]
            assert len(scored) <= 10 and n_coarse <= n_full
            assert all(coarse_errors[i] == errors[i] for i in scored)  # the same objective, where scored
            low = min(range(len(errors)), key=errors.__getitem__)
            if all(errors[i] > errors[i + 1] for i in range(low)) and all(
                    errors[i] < errors[i + 1] for i in range(low, len(errors) - 1)):
                assert torch.equal(s_coarse, s_full)
                compared += 1
    assert compared >= 1  # the equality was checked (OPT's fc1 curve is unimodal on this draw)


def test_awq_grid_step_round_trips_through_the_config():
    c = QuantConfig(algorithm="awq", awq_grid_step=4)
    assert QuantConfig.from_dict({"quant_method": "quantllm", **c.to_dict()}) == c
    assert QuantConfig.from_dict(c.to_dict()).awq_grid_step == 4
    with pytest.raises(ValueError):
        QuantConfig(algorithm="awq", awq_grid_step=0)


def test_search_batches_are_the_first_or_spread_over_the_text():
    assert awq.search_batches(16, 32, "spread") == set(range(16)) == awq.search_batches(16, 16, "first")
    assert awq.search_batches(16, 2, "first") == {0, 1}
    assert awq.search_batches(16, 1, "spread") == {8}
    assert awq.search_batches(16, 2, "spread") == {4, 12}
    assert awq.search_batches(16, 3, "spread") == {2, 8, 13}
    assert awq.search_batches(5, 0, "spread") == set()
    for n in range(1, 40):
        for k in range(1, n + 1):
            assert len(awq.search_batches(n, k, "spread")) == k and max(awq.search_batches(n, k, "spread")) < n


def test_record_parent_inputs_keeps_the_chosen_batches_in_order():
    model = tiny("llama")
    batches = list(ids(n=8, seed=3).split(2))  # 4 batches
    inputs = capture_first_block_inputs(model, batches, "cpu")
    block = decoder_layers(model)[0]
    groups = scale_groups(block, architecture_of(model), model.config)
    with record_parent_inputs(groups, {1, 3}):
        block_stats(block, inputs, groups)
        kept = {id(g): list(g.parent_inputs) for g in groups if g.parent is not None}
    with record_parent_inputs(groups, 4):
        block_stats(block, inputs, groups)
    parents = [g for g in groups if g.parent is not None]
    assert parents
    for g in parents:
        assert len(kept[id(g)]) == 2 and len(g.parent_inputs) == 4
        for (args, kwargs), (all_args, all_kwargs) in zip(kept[id(g)], [g.parent_inputs[1], g.parent_inputs[3]]):
            first = (args or tuple(kwargs.values()))[0]
            assert torch.equal(first, (all_args or tuple(all_kwargs.values()))[0])

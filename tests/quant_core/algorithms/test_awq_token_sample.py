"""AWQ's token-sampled MLP search (awq_mlp_token_stride): every n-th token of every calibration window."""
import pytest
import torch

from quant_core import QuantConfig
from quant_core.algorithms import awq
from quant_core.algorithms.awq import record_parent_inputs, search_scales
from quant_core.algorithms.equalize import scale_groups
from quant_core.algorithms.token_sample import acts_per_token
from quant_core.blocks import architecture_of, capture_first_block_inputs, decoder_layers

from test_awq import block_stats, ids, tiny

STRIDE, SKIP, T = 4, 2, 64


def recorded(model_type, kept, stride=1, skip=0):
    """A tiny model's first block, its groups recorded over 4 batches of 2 windows, the stats, and every
    input each parent saw (whole, in call order)."""
    model = tiny(model_type)
    inputs = capture_first_block_inputs(model, list(ids(n=8, t=T, seed=3).split(2)), "cpu")
    block = decoder_layers(model)[0]
    groups = scale_groups(block, architecture_of(model), model.config)
    seen = {id(g): [] for g in groups}
    hooks = [g.parent.register_forward_pre_hook(lambda _m, args, kwargs, _g=g: seen[id(_g)].append(
        (args[0] if args else kwargs["hidden_states"]).detach()), with_kwargs=True)
        for g in groups if g.parent is not None]
    with record_parent_inputs(groups, kept, stride, skip):
        stats = block_stats(block, inputs, groups)
        for h in hooks:  # before the per-token probe's calls
            h.remove()
    return groups, stats, seen


def mlp_group(groups):
    return next(g for g in groups if g.names[0].startswith("mlp."))


def test_stride_1_records_the_whole_batches_it_did_before():
    groups, _, seen = recorded("llama", {1})
    for g in (g for g in groups if g.parent is not None):
        assert not g.parent_tokens_sampled and len(g.parent_inputs) == 1
        assert torch.equal(g.parent_inputs[0][0][0] if g.parent_inputs[0][0] else
                           g.parent_inputs[0][1]["hidden_states"], seen[id(g)][1])


def test_stride_n_samples_every_batch_past_the_skipped_tokens_with_offsets_varied_per_window():
    groups, _, seen = recorded("llama", {0}, STRIDE, SKIP)
    mlp = mlp_group(groups)
    assert mlp.parent_tokens_sampled
    parts = [args[0][0] for args, _ in mlp.parent_inputs]
    tokens = torch.empty(sum(p.shape[0] for p in parts), parts[0].shape[1])
    for j, part in enumerate(parts):
        tokens[j::len(parts)] = part
    windows = torch.cat(seen[id(mlp)])  # all 4 batches, though the attention keeps only batch 0
    expected = [w[SKIP + i % STRIDE::STRIDE] for i, w in enumerate(windows)]
    assert [len(e) for e in expected] == [16, 16, 15, 15] * 2  # offsets 0..3 past the 2 skipped tokens
    assert torch.equal(tokens, torch.cat(expected))
    attention = next(g for g in groups if g.names[0].startswith("self_attn.q"))
    assert not attention.parent_tokens_sampled and len(attention.parent_inputs) == 1  # whole windows of batch 0


def test_only_a_parent_that_acts_on_each_token_alone_is_sampled():
    groups, _, seen = recorded("llama", {0}, STRIDE, SKIP)
    mlp = mlp_group(groups)
    assert acts_per_token(mlp.parent, seen[id(mlp)][0])
    causal = torch.nn.Linear(128, 128)  # mixes tokens: a per-token probe must fail on it
    mixing = lambda x: causal(x.cumsum(1))  # noqa: E731
    assert not acts_per_token(mixing, seen[id(mlp)][0])
    sampled = [g.names[0] for g in groups if g.parent_tokens_sampled]
    assert sampled == ["mlp.gate_proj"]


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_the_sampled_search_is_no_worse_than_rtn_on_every_token(model_type):
    groups, stats, seen = recorded(model_type, {0}, STRIDE, SKIP)
    mlp = mlp_group(groups)
    config = QuantConfig(algorithm="awq", weight_dtype="int4", group_size=32, awq_scale_ridge=0.0,
                         calibration_skip_tokens=SKIP)
    s, errors = search_scales(mlp, stats[mlp.names[0]], config)
    w = mlp.weight()
    originals = [lin.weight.detach().clone() for lin in mlp.linears]
    ref = [mlp.parent(x)[:, SKIP:] for x in seen[id(mlp)]]

    def full_error(scales):  # the parent's error on every token of every batch past the skipped ones
        for lin, part in zip(mlp.linears, awq._effective_weight(w, mlp, scales, config).split(
                [lin.out_features for lin in mlp.linears])):
            lin.weight.copy_(part)
        err = sum((mlp.parent(x)[:, SKIP:] - r).pow(2).sum().item() for x, r in zip(seen[id(mlp)], ref))
        for lin, original in zip(mlp.linears, originals):
            lin.weight.copy_(original)
        return err
    with torch.no_grad():
        assert full_error(s) <= full_error(torch.ones_like(s))
    assert not torch.equal(s, torch.ones_like(s))  # a ratio beat RTN: the comparison above is not RTN with itself


def test_awq_mlp_token_stride_round_trips_and_earlier_dicts_read_as_whole_batches():
    c = QuantConfig(algorithm="awq", awq_mlp_token_stride=16)
    assert QuantConfig.from_dict(c.to_dict()) == c and QuantConfig.from_dict(c.to_dict()).awq_mlp_token_stride == 16
    old = {k: v for k, v in QuantConfig(algorithm="awq").to_dict().items() if k != "awq_mlp_token_stride"}
    assert QuantConfig.from_dict({**old, "version": 14}).awq_mlp_token_stride == 1  # saved before the field
    with pytest.raises(ValueError):
        QuantConfig(algorithm="awq", awq_mlp_token_stride=0)
    with pytest.raises(ValueError):
        QuantConfig(algorithm="gptq", awq_mlp_token_stride=16)

"""value_weighting: v_proj's Hessian weighs each token by the squared attention it receives (issue 16)."""
from __future__ import annotations

import pytest
import torch

from quant_core import QuantConfig, quantize
from quant_core.algorithms import gptq as gptq_module
from quant_core.algorithms.attention_mass import received_attention, recording_attention_mass
from quant_core.testing import tiny_llama_lm


def _batches(n=4, b=2, t=24):
    return [torch.randint(3, 200, (b, t), generator=torch.Generator().manual_seed(i)) for i in range(n)]


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_received_attention_is_the_column_sum_of_squared_probabilities(implementation):
    model = tiny_llama_lm(layers=1)
    model.set_attn_implementation("eager")
    ids = _batches(1)[0]
    with torch.no_grad():
        probs = model(ids, output_attentions=True).attentions[0]  # [b, heads, q, k], eager's own softmax
    expected = probs.square().sum(2).mean(1)
    model.set_attn_implementation(implementation)  # sdpa passes no mask: the probe must apply causality itself
    seen = []
    with recording_attention_mass(model.model.layers[0].self_attn, seen.append), torch.no_grad():
        out = model(ids).logits
    assert len(seen) == 1 and seen[0].shape == (2, 24)
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the probe does not change what the model computes
        torch.testing.assert_close(out, model(ids).logits, rtol=0, atol=0)
    assert model.config._attn_implementation == implementation  # restored


def test_received_attention_honours_boolean_and_additive_masks():
    q, k = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    reference = received_attention(q, k, None, 8 ** -0.5)
    torch.testing.assert_close(received_attention(q, k, causal, 8 ** -0.5), reference)
    additive = torch.zeros(1, 1, 5, 5).masked_fill(~causal, float("-inf"))
    torch.testing.assert_close(received_attention(q, k, additive, 8 ** -0.5), reference)
    assert torch.allclose(reference.sum(), torch.tensor(reference.sum().item()))
    # every query row's probabilities sum to 1, so the first key (seen by all 5 queries) receives the most
    assert reference[0, 0] == reference[0].max()


def _hessians_used(monkeypatch, **config):
    used = {}
    original = gptq_module.gptq

    def spy(weight, hessian, cfg):
        used[weight.data_ptr()] = hessian.clone()
        return original(weight, hessian, cfg)

    monkeypatch.setattr(gptq_module, "gptq", spy)
    model = tiny_llama_lm(layers=1)
    attn = model.model.layers[0].self_attn
    ptrs = {n: getattr(attn, n).weight.data_ptr() for n in ("q_proj", "k_proj", "v_proj")}
    quantize(model, QuantConfig(algorithm="gptq", group_size=32, **config), calibration=_batches(),
             progress=False, device="cpu")
    return {n: used[p] for n, p in ptrs.items()}


@pytest.mark.parametrize("true_sequential", [True, False])
def test_gptq_gives_v_proj_the_attention_weighted_hessian(monkeypatch, true_sequential):
    plain = _hessians_used(monkeypatch, value_weighting=False, true_sequential=true_sequential)
    weighted = _hessians_used(monkeypatch, true_sequential=true_sequential)
    assert torch.equal(plain["v_proj"], plain["q_proj"])
    torch.testing.assert_close(weighted["q_proj"], plain["q_proj"])  # q and k keep the plain Hessian
    torch.testing.assert_close(weighted["k_proj"], plain["k_proj"])
    # by hand: the block's input after the norm, weighted by what the probe measures
    model = tiny_llama_lm(layers=1)
    model.set_attn_implementation("eager")
    h = torch.zeros(64, 64)
    n = 0
    for ids in _batches():
        with torch.no_grad():
            out = model(ids, output_attentions=True, output_hidden_states=True)
        x = model.model.layers[0].input_layernorm(out.hidden_states[0]).reshape(-1, 64)
        w = out.attentions[0].square().sum(2).mean(1).reshape(-1, 1)
        h += (x * w).T @ x
        n += x.shape[0]
    torch.testing.assert_close(weighted["v_proj"], 2 * h / n, rtol=1e-4, atol=1e-6)


def test_config_defaults_on_and_old_checkpoints_record_it_off():
    assert QuantConfig(algorithm="gptq").value_weighting is True
    assert QuantConfig.from_dict({"version": 5, "algorithm": "gptq"}).value_weighting is False
    assert QuantConfig.from_dict({"algorithm": "gptq"}).value_weighting is True

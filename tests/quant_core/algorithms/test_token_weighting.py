"""token_weighting and mlp_out_shrinkage: the Hessians v_proj and down_proj are solved with (issue 16)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from quant_core import QuantConfig, quantize
from quant_core.algorithms import gptq as gptq_module
from quant_core.algorithms.attention_mass import received_attention, recording_attention_mass
from quant_core.algorithms.hessians import Hessian, hessian_for
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
    layer = model.model.layers[0]
    ptrs = {n: layer.get_submodule(n).weight.data_ptr()
            for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")}
    config = {"calibration_dtype": "fp32", **config}  # compared with fp32 Hessians computed by hand
    quantize(model, QuantConfig(algorithm="gptq", group_size=32, **config), calibration=_batches(),
             progress=False, device="cpu")
    return {n.split(".")[1]: used[p] for n, p in ptrs.items()}


def _by_hand():
    """v_proj's and down_proj's weighted Hessians of the float 1-layer model, from eager's own probabilities."""
    model = tiny_llama_lm(layers=1)
    model.set_attn_implementation("eager")
    layer = model.model.layers[0]
    seen = {}
    hooks = [layer.mlp.down_proj.register_forward_pre_hook(lambda _m, a: seen.update(down=a[0])),
             layer.register_forward_hook(lambda _m, _a, out: seen.update(out=out[0] if isinstance(out, tuple) else out))]
    hv, hd, n = torch.zeros(64, 64), torch.zeros(128, 128), 0
    for ids in _batches():
        out = model(ids, output_attentions=True, output_hidden_states=True)
        x = layer.input_layernorm(out.hidden_states[0]).reshape(-1, 64)
        mass = out.attentions[0].square().sum(2).mean(1).reshape(-1, 1)
        inv = 1 / seen["out"].pow(2).mean(-1).reshape(-1, 1)
        xd = seen["down"].reshape(-1, 128)
        hv += (x * mass).T @ x
        hd += (xd * inv).T @ xd
        n += x.shape[0]
    for h in hooks:
        h.remove()
    return 2 * hv / n, 2 * hd / n


@pytest.mark.parametrize("true_sequential", [True, False])
def test_gptq_solves_v_proj_and_down_proj_with_their_token_weighted_hessians(monkeypatch, true_sequential):
    plain = _hessians_used(monkeypatch, token_weighting=False, mlp_out_shrinkage=0.0, hessian_shrinkage=0.0,
                           true_sequential=true_sequential)
    weighted = _hessians_used(monkeypatch, mlp_out_shrinkage=0.0, hessian_shrinkage=0.0, true_sequential=true_sequential)
    assert torch.equal(plain["v_proj"], plain["q_proj"])
    # the others keep the plain Hessian (true-sequential: only the first group's input is the same in both runs,
    # later groups see the differently quantized attention)
    for name in ("q_proj", "k_proj") if true_sequential else ("q_proj", "k_proj", "up_proj"):
        torch.testing.assert_close(weighted[name], plain[name])
    with torch.no_grad():
        hv, hd = _by_hand()
    torch.testing.assert_close(weighted["v_proj"], hv, rtol=1e-4, atol=1e-6)
    if not true_sequential:  # down_proj's inputs are the float block's only then
        torch.testing.assert_close(weighted["down_proj"], hd, rtol=1e-4, atol=1e-6)
    else:
        assert not torch.allclose(weighted["down_proj"], plain["down_proj"], rtol=0.05)


def test_mlp_out_shrinkage_blends_only_down_projs_hessian_with_its_diagonal(monkeypatch):
    kw = dict(token_weighting=False, true_sequential=False)  # down_proj's input does not depend on the setting
    off = _hessians_used(monkeypatch, mlp_out_shrinkage=0.0, **kw)
    half = _hessians_used(monkeypatch, mlp_out_shrinkage=0.5, **kw)
    full = _hessians_used(monkeypatch, mlp_out_shrinkage=1.0, **kw)
    h = off["down_proj"]
    torch.testing.assert_close(half["down_proj"], 0.5 * h + 0.5 * torch.diag(h.diagonal()))
    torch.testing.assert_close(full["down_proj"], torch.diag(h.diagonal()))
    torch.testing.assert_close(half["up_proj"], off["up_proj"])


def test_config_defaults_on_and_old_checkpoints_record_them_off():
    c = QuantConfig(algorithm="gptq")
    assert c.token_weighting is True and c.mlp_out_shrinkage == 0.5
    old = QuantConfig.from_dict({"version": 5, "algorithm": "quantease"})
    assert old.token_weighting is False and old.mlp_out_shrinkage == 0.0
    assert QuantConfig.from_dict({"version": 5, "algorithm": "rtn"}).algorithm == "rtn"  # RTN has neither


def test_hessian_shrinkage_blends_every_other_gptq_hessian_with_its_diagonal(monkeypatch):
    kw = dict(token_weighting=False, true_sequential=False, mlp_out_shrinkage=0.0)
    off = _hessians_used(monkeypatch, hessian_shrinkage=0.0, **kw)
    half = _hessians_used(monkeypatch, hessian_shrinkage=0.5, **kw)
    for name in ("q_proj", "v_proj", "up_proj"):
        h = off[name]
        torch.testing.assert_close(half[name], 0.5 * h + 0.5 * torch.diag(h.diagonal()))
        assert not torch.allclose(half[name], h)
    torch.testing.assert_close(half["down_proj"], off["down_proj"])  # mlp_out_shrinkage decides down_proj


def test_quantease_solves_with_unshrunk_hessians():
    h = Hessian(4)
    h.add(torch.randn(16, 4))
    block = SimpleNamespace(arch=SimpleNamespace(mlp_output="mlp.down_proj"))
    block.config = QuantConfig(algorithm="quantease", mlp_out_shrinkage=0.0)
    assert torch.equal(hessian_for(block, "self_attn.q_proj", ["self_attn.q_proj"], {"self_attn.q_proj": h}), h.matrix)
    block.config = QuantConfig(algorithm="gptq", mlp_out_shrinkage=0.0)
    assert not torch.equal(hessian_for(block, "self_attn.q_proj", ["self_attn.q_proj"], {"self_attn.q_proj": h}),
                           h.matrix)


def test_hessian_shrinkage_is_gptqs_default_and_older_gptq_checkpoints_record_it_off():
    assert QuantConfig(algorithm="gptq").hessian_shrinkage == 0.5
    assert QuantConfig.from_dict({"version": 7, "algorithm": "gptq"}).hessian_shrinkage == 0.0
    assert QuantConfig.from_dict({"version": 8, "algorithm": "gptq"}).hessian_shrinkage == 0.5
    with pytest.raises(ValueError, match="hessian_shrinkage"):
        QuantConfig(algorithm="quantease", hessian_shrinkage=0.2)

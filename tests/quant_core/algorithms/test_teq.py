"""TEQ on tiny random decoders: trained scales beat RTN on a layer group and end to end."""
import copy

import pytest
import torch
import transformers as T

from quant_core import QuantConfig, QuantLinear, quantize
from quant_core.algorithms.equalize import scale_groups
from quant_core.algorithms.input_stats import InputStats
from quant_core.algorithms.rounding import fake_quantize
from quant_core.algorithms.teq import fake_quantize_ste, train_scales
from quant_core.blocks import architecture_of, capture_first_block_inputs, decoder_layers, record_inputs
from quant_core.primitives import output_error



def tiny():
    """A tiny Llama with a few outlier input channels, as trained LLMs have."""
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(T.LlamaConfig(
        vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[:4] *= 20
            layer.post_attention_layernorm.weight[:4] *= 20
    return model


def ids(n=4, t=64, seed=1):
    return torch.randint(0, 128, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("weight_dtype,scheme", [("int4", "sym"), ("int3", "asym"), ("nf4", "sym")])
def test_straight_through_fake_quantize_matches_the_real_one_and_passes_gradients(weight_dtype, scheme):
    config = QuantConfig(weight_dtype=weight_dtype, group_size=32, scheme=scheme, scale_dtype="fp32")
    w = torch.randn(8, 64, requires_grad=True)
    q = fake_quantize_ste(w, config)
    torch.testing.assert_close(q, fake_quantize(w.detach(), config), atol=1e-6, rtol=0)
    q.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_trained_scales_lower_a_layer_groups_output_error_below_rtn():
    model = tiny()
    inputs = capture_first_block_inputs(model, list(ids().split(1)), "cpu")
    block = decoder_layers(model)[0]
    group = scale_groups(block, architecture_of(model), model.config)[2]  # gate_proj + up_proj
    stats = InputStats(group.in_features, keep_tokens=256)
    with torch.no_grad(), record_inputs(block, [group.names[0]], lambda n, x: stats.add(x)):
        inputs.forward(block)
    config = QuantConfig(weight_dtype="int4", group_size=32, algorithm="teq", teq_steps=60, teq_lr=2e-2,
                         teq_scale_ridge=0.0)  # errors on the calibration inputs alone
    s, info = train_scales(group, stats, config)
    assert s.shape == (group.in_features,) and (s > 0).all() and not torch.allclose(s, torch.ones_like(s))
    w = group.weight()
    teq_err = output_error(w - fake_quantize(w * s, config) / s, stats.H).item()
    assert teq_err == pytest.approx(info["teq_error"], rel=1e-4)
    assert teq_err < 0.8 * info["rtn_error"], info


def test_quantize_with_teq_end_to_end_beats_rtn_on_logits():
    calib, held_out = ids(4, 64, seed=1), ids(2, 64, seed=2)
    float_model = tiny()
    with torch.no_grad():
        ref = float_model(held_out).logits
    errs = {}
    for algorithm, settings in (("rtn", {}), ("teq", {"teq_steps": 40, "teq_lr": 2e-2})):
        model = quantize(copy.deepcopy(float_model), QuantConfig(algorithm=algorithm, group_size=32, **settings, head_weight_dtype=None),
                         calibration=calib, progress=False)
        assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 14
        with torch.no_grad():
            errs[algorithm] = (model(held_out).logits - ref).pow(2).mean().item()
    assert errs["teq"] < errs["rtn"], errs


def test_teq_without_token_samples_says_what_to_do():
    model = tiny()
    group = scale_groups(decoder_layers(model)[0], architecture_of(model), model.config)[0]
    with pytest.raises(ValueError, match="keep_tokens"):
        train_scales(group, InputStats(group.in_features), QuantConfig())

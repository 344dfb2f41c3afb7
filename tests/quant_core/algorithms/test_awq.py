"""AWQ on tiny random decoders: exact folding, lower error than RTN, clear errors."""
import copy

import pytest
import torch
import transformers as T

from quant_core import QuantConfig, QuantLinear, quantize
from quant_core.algorithms.awq import awq_block, search_clip, search_scales
from quant_core.algorithms.equalize import fold_scales, scale_groups
from quant_core.algorithms.input_stats import InputStats
from quant_core.algorithms.rounding import fake_quantize
from quant_core.blocks import (UnsupportedModelError, architecture_of, capture_first_block_inputs,
                               decoder_layers, linearize_conv1d, record_inputs)
from quant_core.calibration import CalibrationError
from reload_support import reloaded_logits

_SMALL = dict(vocab_size=128, num_hidden_layers=2, num_attention_heads=4)
CONFIGS = {  # GQA (llama), biases on q/k/v (qwen2), LayerNorm with bias + ReLU fc1 -> fc2 (opt)
    "llama": lambda: T.LlamaConfig(hidden_size=128, intermediate_size=256, num_key_value_heads=2, **_SMALL),
    "qwen2": lambda: T.Qwen2Config(hidden_size=128, intermediate_size=256, num_key_value_heads=2, **_SMALL),
    "opt": lambda: T.OPTConfig(hidden_size=128, ffn_dim=256, word_embed_proj_dim=128, pad_token_id=1,
                               enable_bias=True, **_SMALL),
    # fused producers: v rows of qkv_proj, up half of gate_up_proj (phi3); v third of c_attn (gpt2)
    "phi3": lambda: T.Phi3Config(hidden_size=128, intermediate_size=256, num_key_value_heads=2, pad_token_id=0,
                                 **_SMALL),
    "gpt2": lambda: T.GPT2Config(vocab_size=128, n_embd=128, n_layer=2, n_head=4),
}
FOLDABLE_GROUPS = {"gpt2": 3}  # GPT-2's mlp.c_proj reads GELU's output: nothing can absorb a scale


def tiny(model_type="llama"):
    """A tiny decoder with a few outlier input channels, as trained LLMs have (what AWQ exploits)."""
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(CONFIGS[model_type]()).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if "norm" in name and getattr(mod, "weight", None) is not None and mod.weight.dim() == 1:
                mod.weight[:4] *= 20
                if getattr(mod, "bias", None) is not None:
                    mod.bias.normal_(0, 0.1)
    return model


def ids(n=4, t=64, seed=1):
    return torch.randint(0, 128, (n, t), generator=torch.Generator().manual_seed(seed))


def block_stats(block, inputs, groups):
    stats = {}
    for g in groups:
        shared = InputStats(g.in_features)
        stats.update({n: shared for n in g.names})
    with torch.no_grad(), record_inputs(block, [g.names[0] for g in groups], lambda n, x: stats[n].add(x)):
        inputs.forward(block)
    return stats


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_awq_scales_fold_without_changing_the_float_model_output(model_type):
    model = tiny(model_type)
    x = ids()
    with torch.no_grad():
        before = model(x).logits
    arch = architecture_of(model)
    inputs = capture_first_block_inputs(model, [x], "cpu")
    config = QuantConfig(algorithm="awq", weight_dtype="int4", group_size=32, awq_scale_ridge=0.3)
    folded = nontrivial = 0
    for block in decoder_layers(model):
        if arch.conv1d:
            linearize_conv1d(block)
        groups = scale_groups(block, arch, model.config)
        stats = block_stats(block, inputs, groups)
        for g in reversed(groups):
            if g.foldable:
                s, errors = search_scales(g, stats[g.names[0]], config)
                assert len(errors) == 20
                fold_scales(g, s)
                folded += 1
                nontrivial += not torch.allclose(s, torch.ones_like(s))
        with torch.no_grad():
            inputs.hidden = inputs.forward(block)
    assert folded == FOLDABLE_GROUPS.get(model_type, 4) * len(decoder_layers(model))  # GQA's o_proj included
    assert nontrivial >= folded // 2  # the check below is not vacuous
    with torch.no_grad():
        after = model(x).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=2e-5)  # exact folding; fp32 rounding of logits ~1


@pytest.mark.parametrize("weight_dtype,group_size,scheme", [("int4", 32, "sym"), ("int3", 32, "asym"),
                                                            ("nf4", 64, "sym")])
def test_awq_block_output_error_is_lower_than_rtn(weight_dtype, group_size, scheme):
    model = tiny()
    inputs = capture_first_block_inputs(model, list(ids().split(1)), "cpu")
    block = decoder_layers(model)[0]
    config = QuantConfig(algorithm="awq", weight_dtype=weight_dtype, group_size=group_size, scheme=scheme,
                         awq_scale_ridge=0.3)
    with torch.no_grad():
        ref = torch.cat(inputs.forward(block))

    def block_error(b, weights):
        with torch.no_grad():
            for name, w in weights.items():
                b.get_submodule(name).weight.copy_(w)
            return (torch.cat(inputs.forward(b)) - ref).pow(2).mean().item()

    arch = architecture_of(model)
    rtn_block = copy.deepcopy(block)
    rtn_err = block_error(rtn_block, {n: fake_quantize(rtn_block.get_submodule(n).weight, config)
                                      for n in arch.linear_names()})
    awq_blk = copy.deepcopy(block)
    groups = scale_groups(awq_blk, arch, model.config)
    results = awq_block(groups, block_stats(awq_blk, inputs, groups), config)
    awq_err = block_error(awq_blk, {n: r.pack(config).dequantize() for n, r in results.items()})
    assert awq_err < 0.8 * rtn_err, (awq_err, rtn_err)


def test_clip_search_never_loses_to_no_clipping_on_its_objective():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    x = torch.randn(256, 64) * torch.linspace(0.1, 3, 64)
    H = x.T @ x
    config = QuantConfig(weight_dtype="int3", group_size=32, scheme="asym")
    shrink = search_clip(w, H, config)
    assert shrink.shape == (16, 2) and shrink.min() >= 0.55 and (shrink < 1).any()
    err = lambda q: ((x @ (w - q).T) ** 2).sum()  # noqa: E731
    assert err(fake_quantize(w, config, shrink)) < err(fake_quantize(w, config))


def test_quantize_with_awq_end_to_end_beats_rtn_on_logits():
    calib, held_out = ids(4, 64, seed=1), ids(2, 64, seed=2)
    float_model = tiny()
    with torch.no_grad():
        ref = float_model(held_out).logits
    errs = {}
    for algorithm in ("rtn", "awq"):
        model = quantize(copy.deepcopy(float_model), QuantConfig(algorithm=algorithm, group_size=32, head_weight_dtype=None),
                         calibration=calib, progress=False)
        assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 14  # 7 per block, lm_head float
        with torch.no_grad():
            errs[algorithm] = (model(held_out).logits - ref).pow(2).mean().item()
    assert errs["awq"] < errs["rtn"], errs
    assert model.config.quantization_config["algorithm"] == "awq"


def test_unsupported_architecture_is_named_before_any_work():
    model = T.AutoModelForCausalLM.from_config(T.GPTNeoXConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4))
    with pytest.raises(UnsupportedModelError, match="gpt_neox.*supported: llama"):
        quantize(model, QuantConfig(algorithm="awq", group_size=32), calibration=ids(), progress=False)


def test_too_little_calibration_data_is_an_error():
    with pytest.raises(ValueError, match="calibration data has 32 tokens"):
        quantize(tiny(), QuantConfig(algorithm="awq"), calibration=ids(1, 32), progress=False)
    with pytest.raises(CalibrationError, match="tokenizer"):
        quantize(tiny(), QuantConfig(algorithm="awq"), progress=False)


def test_awq_model_saves_and_reloads_with_the_folded_norms(tmp_path):
    model = quantize(tiny(), QuantConfig(algorithm="awq", group_size=32), calibration=ids(), progress=False)
    expected, got, _ = reloaded_logits(model, tmp_path / "awq", ids(1, 16, seed=3))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

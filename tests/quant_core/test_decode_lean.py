"""The lean decode step writes the same greedy tokens as transformers' own forward pass."""
from __future__ import annotations

import copy

import pytest
import torch
import transformers

from quant_core import cpu_features
from quant_core.config import QuantConfig
from quant_core.decode import LeanDecoder, StaticDecoder, greedy_generate, lean_fits, make_decoder
from quant_core.errors import UnsupportedModelError
from quant_core.quantize import quantize

# initializer_range 0.2: a tiny random model whose greedy tokens vary (0.02 repeats one token)
COMMON = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, initializer_range=0.2,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILIES = {  # name -> (config class, model class, extra config); qwen2 has q/k/v biases, qwen3 q/k norms
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
}
NEEDS_KERNELS = pytest.mark.skipif(not cpu_features.at_least("avx2", cpu_features.detected_isa()),
                                   reason="CPU has no AVX2: the C++ kernels (fused projections) never run here")


def tiny(family: str, seed: int = 0):
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**COMMON, **extra)
    return getattr(transformers, model_cls)(config).eval()


def prompt(b=2, t=7, seed=0):
    return torch.randint(3, 256, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_float_families_match_transformers(family):
    model = tiny(family)
    ids = prompt()
    want, _ = greedy_generate(model, ids, 12, static_cache=False)  # transformers' forward, dynamic cache
    got, _ = greedy_generate(model, ids, 12, lean=True)
    assert len(set(want[0].tolist())) > 3  # tokens vary: a real comparison
    assert torch.equal(want, got)


@NEEDS_KERNELS
@pytest.mark.parametrize("fmt,group_size,compute", [("int4", 32, "fp32"), ("int8", -1, "int8"), ("nf4", 64, "fp32")])
@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_quantized_models_match_their_module_path(family, fmt, group_size, compute):
    model = quantize(tiny(family), QuantConfig(weight_dtype=fmt, group_size=group_size, compute_dtype=compute,
                                               modules_to_not_convert=[]))
    ids = prompt()
    want, _ = greedy_generate(model, ids, 12, lean=False)  # the same kernels through transformers' modules
    dec = LeanDecoder(model, 2, 7 + 12)
    got, _ = greedy_generate(model, ids, 12, decoder=dec)
    assert torch.equal(want, got)
    layer = dec.lean.layers[0]
    assert layer.qkv.fused and layer.gate_up.fused and dec.lean.head.fused  # one kernel call each
    assert len(layer.qkv.kernel.w.segments) == (1 if family == "phi3" else 3)
    assert dec.one_call and dec.layer_step is not None  # the steps ran all layers in one C++ call


@NEEDS_KERNELS
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_cpp_operations_match_pytorch_operations(family):
    """CppOps + the one-call step against TorchOps (transformers' operations) on a padded batch."""
    model = quantize(tiny(family), QuantConfig(weight_dtype="int4", group_size=32, modules_to_not_convert=[]))
    ids = prompt(3, 6, seed=5)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    cpp = LeanDecoder(model, 3, 20)
    torch_ops = LeanDecoder(model, 3, 20, ops="torch")
    assert cpp.one_call and not torch_ops.one_call
    # Both run the same kernels (steps: int16 activations; the 18-row prompt: int8 per 32-column block,
    # the kernels' prompt path); the ops' 1e-7 differences flip an activation's rounding now and then (one
    # int16 level is 1.5e-5 of its 32-column block's largest), which the layers carry on: measured 1.1e-5
    # (llama) and 2.7e-7 (qwen3) on the prompt and 4.2e-5..1.0e-4 per step, so 2e-4 of the largest logit.
    tol = 2e-4
    a = cpp.prefill(ids, mask)
    b = torch_ops.prefill(ids, mask)
    assert torch.allclose(a, b, atol=tol * b.abs().max().item())
    for _ in range(5):
        tokens = b.argmax(-1)
        a, b = cpp.step(tokens), torch_ops.step(tokens)
        assert torch.allclose(a, b, atol=tol * b.abs().max().item())


def test_left_padded_rows_decode_like_unpadded_ones():
    model = tiny("llama")
    long_ids, short_ids = prompt(1, 8, seed=1), prompt(1, 5, seed=2)
    batch = torch.cat([long_ids, torch.cat([torch.zeros(1, 3, dtype=torch.long), short_ids], 1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    both, _ = greedy_generate(model, batch, 6, attention_mask=mask, lean=True)
    alone, _ = greedy_generate(model, short_ids, 6, lean=True)
    reference, _ = greedy_generate(model, batch, 6, attention_mask=mask, lean=False)
    assert torch.equal(both[1], alone[0]) and torch.equal(both, reference)


def test_decoder_is_reusable_and_guards_its_size():
    model = tiny("llama")
    ids = prompt(1, 4, seed=3)
    dec = LeanDecoder(model, batch_size=1, max_len=8)
    first, _ = greedy_generate(model, ids, 4, decoder=dec)
    again, _ = greedy_generate(model, ids, 4, decoder=dec)
    assert torch.equal(first, again)
    dec.step(first[:, -1])  # 4 prompt + 4 new positions fill the 8-slot cache
    with pytest.raises(ValueError, match="cache holds 8"):
        dec.step(first[:, -1])
    with pytest.raises(ValueError, match="batch 1"):
        dec.prefill(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(RuntimeError, match="prefill"):
        LeanDecoder(model, 1, 8).step(first[:, -1])


def test_other_architectures_keep_transformers_modules():
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32)
    gpt2 = transformers.GPT2LMHeadModel(config).eval()
    assert "gpt2" in lean_fits(gpt2, 16)
    assert isinstance(make_decoder(gpt2, 1, 16), StaticDecoder)
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        LeanDecoder(gpt2, 1, 16)
    assert isinstance(make_decoder(tiny("llama"), 1, 16), LeanDecoder)


def test_sliding_window_longer_than_the_cache_falls_back():
    model = tiny("mistral")
    model.config.sliding_window = 8
    assert "sliding window" in lean_fits(model, 16)
    assert isinstance(make_decoder(model, 1, 16), StaticDecoder)
    assert isinstance(make_decoder(model, 1, 8), LeanDecoder)


@pytest.mark.slow
@NEEDS_KERNELS
def test_smollm2_int4_greedy_text_matches_the_module_path(smollm2):
    model, tok = smollm2
    qmodel = quantize(copy.deepcopy(model), QuantConfig(weight_dtype="int4", group_size=128))
    ids = tok("The three primary colors are", return_tensors="pt").input_ids
    want, _ = greedy_generate(qmodel, ids, 32, lean=False)
    got, _ = greedy_generate(qmodel, ids, 32, lean=True)
    assert tok.decode(got[0]) == tok.decode(want[0])
    assert torch.equal(got, want)


@NEEDS_KERNELS
def test_requests_share_one_lean_model_until_the_model_changes():
    from quant_core.decode.lean_model import lean_model

    model = quantize(tiny("llama"), QuantConfig(weight_dtype="int4", group_size=32, modules_to_not_convert=[]))
    first = LeanDecoder(model, 1, 16).lean
    assert LeanDecoder(model, 2, 32).lean is first  # a second request reuses the fused projections
    with torch.no_grad():  # written in place: the norms' weights are copied into the LeanModel
        model.model.norm.weight.mul_(3.0)
    rebuilt = lean_model(model)
    assert rebuilt is not first and lean_model(model) is rebuilt
    model.model.layers[0].mlp.down_proj = model.model.layers[1].mlp.down_proj  # a module replaced
    again = lean_model(model)
    assert again is not rebuilt
    for m in model.modules():  # another kernel forced, no tensor changed
        if hasattr(m, "forced_kernel"):
            m.forced_kernel, m._kernel = "reference", None
    assert lean_model(model) is not again

"""The block-sequential driver on tiny random models of every supported architecture."""
import pytest
import torch
import transformers as T
from torch import nn

from quant_core.blocks import (ARCHITECTURES, UnsupportedModelError, architecture_of, decoder_layers,
                               linearize_conv1d, record_inputs, run_blockwise)

_SMALL = dict(vocab_size=128, num_hidden_layers=2, num_attention_heads=4)
CONFIGS = {
    "llama": lambda: T.LlamaConfig(hidden_size=64, intermediate_size=96, num_key_value_heads=2, **_SMALL),
    "mistral": lambda: T.MistralConfig(hidden_size=64, intermediate_size=96, num_key_value_heads=2, **_SMALL),
    "qwen2": lambda: T.Qwen2Config(hidden_size=64, intermediate_size=96, num_key_value_heads=2, **_SMALL),
    "phi3": lambda: T.Phi3Config(hidden_size=64, intermediate_size=96, pad_token_id=0, **_SMALL),
    "gpt2": lambda: T.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4),
    "opt": lambda: T.OPTConfig(hidden_size=64, ffn_dim=96, word_embed_proj_dim=64, pad_token_id=1, **_SMALL),
}


def tiny(model_type):
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(CONFIGS[model_type]()).eval()


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_table_names_real_modules_and_driver_reproduces_the_float_forward(model_type):
    model = tiny(model_type)
    arch = architecture_of(model)
    block = decoder_layers(model)[0]
    if arch.conv1d:
        linearize_conv1d(block)
    for group in arch.groups:
        for name in group.names:
            assert isinstance(block.get_submodule(name), nn.Linear), name
        if group.prev_op:
            block.get_submodule(group.prev_op)
        if group.parent:
            block.get_submodule(group.parent)

    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    expected = []
    hook = decoder_layers(model)[-1].register_forward_hook(
        lambda m, i, o: expected.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    hook.remove()

    seen = []
    run_blockwise(model, [ids[:1], ids[1:]], lambda b, inputs, i: seen.append((i, inputs)),
                  device="cpu", progress=False)
    assert [i for i, _ in seen] == [0, 1]
    final = torch.cat(seen[-1][1].hidden)  # after the driver ran the last block
    torch.testing.assert_close(final, expected[0], atol=1e-5, rtol=1e-5)


def test_next_block_sees_the_modified_outputs():
    model = tiny("llama")
    snapshots = []

    def silence(block, inputs, i):
        snapshots.append([h.clone() for h in inputs.hidden])
        if i == 0:  # a block whose residual branches output zero is the identity
            with torch.no_grad():
                block.self_attn.o_proj.weight.zero_()
                block.mlp.down_proj.weight.zero_()

    run_blockwise(model, [torch.randint(0, 128, (1, 8))], silence, device="cpu", progress=False)
    torch.testing.assert_close(snapshots[1][0], snapshots[0][0], atol=0, rtol=0)


def test_record_inputs_sees_each_linear_input():
    model = tiny("llama")
    got = {}

    def per_block(block, inputs, i):
        with record_inputs(block, ["mlp.down_proj"], lambda name, x: got.setdefault((i, name), x.shape)):
            inputs.forward(block)

    run_blockwise(model, [torch.randint(0, 128, (1, 8))], per_block, device="cpu", progress=False)
    assert got == {(0, "mlp.down_proj"): torch.Size([1, 8, 96]), (1, "mlp.down_proj"): torch.Size([1, 8, 96])}


def test_unsupported_model_and_empty_batches_raise_clear_errors():
    class Bert(nn.Module):
        config = type("C", (), {"model_type": "bert"})()
    with pytest.raises(UnsupportedModelError, match="supported: llama"):
        architecture_of(Bert())
    with pytest.raises(ValueError, match="no calibration batches"):
        run_blockwise(tiny("llama"), [], lambda *a: None, device="cpu", progress=False)


def test_architectures_cover_the_required_families():
    assert {"llama", "mistral", "qwen2", "phi3", "gpt2", "opt"} <= set(ARCHITECTURES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to check placement")
def test_only_the_current_block_is_on_the_compute_device():
    model = tiny("llama")
    layers = decoder_layers(model)
    placements = []
    run_blockwise(model, [torch.randint(0, 128, (1, 8))],
                  lambda b, inputs, i: placements.append([layer.mlp.up_proj.weight.device.type for layer in layers]),
                  device="cuda", progress=False)
    assert placements == [["cuda", "cpu"], ["cpu", "cuda"]]
    assert all(layer.mlp.up_proj.weight.device.type == "cpu" for layer in layers)

"""The tiny model, calibration windows and block that the SignRound tests share (not a test module)."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from quant_core.algorithms.driver import CalibrationBlock
from quant_core.blocks import architecture_of, decoder_layers


def tiny(layers=2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                        max_position_embeddings=256, tie_word_embeddings=True)).eval()


def ids(n=8, t=32, seed=1) -> torch.Tensor:
    return torch.randint(3, 256, (n, t), generator=torch.Generator().manual_seed(seed))


def first_block(model, inputs, config) -> CalibrationBlock:
    return CalibrationBlock(decoder_layers(model)[0], inputs, 0, "model.layers.0", architecture_of(model), config,
                            model.config)


def train_to_far_edge(_block, roundings, _targets):
    """A stand-in for ``signround.train`` that ends somewhere bad: every offset pushed to the far edge."""
    with torch.no_grad():
        for rounding in roundings.values():
            rounding.offset.fill_(0.5)
    return 0.0

"""A tiny byte-level BPE tokenizer (300 tokens) so GGUF tests write and parse a small vocabulary:
SmolLM2's 49k-token vocabulary costs tens of seconds per GGUF read on these CPUs."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 50, "quantized weights " * 50], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>")


@pytest.fixture
def tiny_llama_320(tiny_llama_config):
    """The shared tiny Llama with room for the tiny tokenizer's vocabulary."""
    from transformers import LlamaForCausalLM
    config = tiny_llama_config.__class__(**{**tiny_llama_config.to_dict(), "vocab_size": 320})
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()

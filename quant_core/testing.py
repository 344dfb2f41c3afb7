"""Tiny random models and a byte-level tokenizer, built offline in milliseconds, for tests and demos.

Nothing here downloads: the tokenizer covers every byte (any text round-trips) and
the models are built from configs with a fixed seed.
"""
from __future__ import annotations

import torch

# The chat template of SmolLM2/ChatML, so chat code paths can be tested on tiny models.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_VOCAB = 3 + 256  # <pad>, <s>, </s> and one token per byte


def byte_tokenizer(chat_template: str | None = None):
    """A fast tokenizer with ids 0 <pad>, 1 <s>, 2 </s>, then the 256 byte-level symbols."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = chat_template
    return fast


def tiny_llama_lm(seed: int = 0, layers: int = 2):
    """A random 2-layer LlamaForCausalLM over ``TINY_VOCAB`` (hidden 64), eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def tiny_t5(seed: int = 0):
    """A random 2-layer T5ForConditionalGeneration over ``TINY_VOCAB`` (d_model 64), eval mode."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=TINY_VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=2)
    return T5ForConditionalGeneration(cfg).eval()

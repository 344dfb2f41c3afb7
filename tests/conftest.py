"""Shared fixtures: a tiny random Llama for unit tests, the real SmolLM2 for slow integration tests."""
from __future__ import annotations

import os

import pytest
import torch

# Triton decides interpreted-or-compiled for its own helpers (tl.cdiv, ...) when it is first imported, and
# a test module may import it indirectly while being collected (transformers' masking_utils pulls in
# torch._dynamo, which imports triton): without a GPU every Triton kernel test needs the interpreter, so
# the variable is set before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_llama_config():
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=256, max_position_embeddings=256,
                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)


@pytest.fixture
def tiny_llama(tiny_llama_config):
    from transformers import LlamaForCausalLM
    import copy
    torch.manual_seed(0)  # a copy: quantize() records its config on the model's config object
    return LlamaForCausalLM(copy.deepcopy(tiny_llama_config)).eval()


@pytest.fixture(scope="session")
def smollm2_dir():
    """Float Hugging Face directory of the embedded SmolLM2-135M-Instruct (converted once, cached)."""
    from quant_core.loading import embedded_model_dir
    return embedded_model_dir()


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """(model, tokenizer) fp32. Session-scoped: tests must not modify the model (deepcopy it)."""
    from quant_core.loading import load_model
    return load_model(smollm2_dir)


@pytest.fixture
def tiny_hf_dir(tiny_llama_config, smollm2_dir, tmp_path):
    """A local Hugging Face directory: a tiny random Llama sized to SmolLM2's tokenizer."""
    from transformers import AutoTokenizer, LlamaForCausalLM
    path = tmp_path / "tiny"
    fields = {k: v for k, v in tiny_llama_config.to_dict().items() if k != "quantization_config"}
    config = tiny_llama_config.__class__(**{**fields, "vocab_size": 49152})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(path)
    return path

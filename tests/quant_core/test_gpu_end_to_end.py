"""End to end on a CUDA GPU: the CLI quantizes, saves, reloads onto the GPU and generates
through the Triton kernels; the LangChain wrapper takes ``device="cuda"``.

The model directory is made offline (tiny random Llama + a byte-level BPE tokenizer trained
in-process on a few sentences), so these tests need no hub and no embedded model. Without a
GPU they skip; the same code paths run on CPU in the rest of the suite.
"""
from __future__ import annotations

import pytest
import torch

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")

SENTENCES = ["the quick brown fox jumps over the lazy dog", "hello world, this is a tiny test",
             "quantized models run on the gpu with triton kernels"] * 20


def offline_model_dir(path, vocab_size: int = 300):
    """Save a tiny random Llama with a freshly trained byte-level BPE tokenizer to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(fast), max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture
def quantized_dir(tmp_path):
    from quant_core.cli import main

    src = offline_model_dir(tmp_path / "float")
    out = tmp_path / "int4"
    assert main(["quantize", str(src), "-o", str(out), "--group-size", "32"]) == 0
    return out


@gpu
def test_cli_generate_on_cuda_uses_triton(quantized_dir, capsys):
    from quant_core.cli import main
    from quant_core.modules import QuantLinear
    from quant_core.serialization import load_quantized

    assert main(["generate", str(quantized_dir), "the quick", "--device", "cuda", "--raw",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out.strip()

    model, tok = load_quantized(quantized_dir, device="cuda")
    ids = tok("the quick brown fox", return_tensors="pt").input_ids.cuda()
    with torch.no_grad():
        logits = model(ids).logits.float()
    kernels = {m.kernel.name for m in model.modules() if isinstance(m, QuantLinear)}
    assert kernels == {"triton"}

    ref, _ = load_quantized(quantized_dir, device="cpu", kernel="reference")
    with torch.no_grad():
        expected = ref(ids.cpu()).logits.float()
    # fp32 activations on both sides; the Triton dot is exact fp32 ("ieee"), so only summation
    # order differs: 1e-4 of the logits' scale
    scale = expected.abs().max().item()
    assert (logits.cpu() - expected).abs().max().item() <= 1e-4 * scale + 1e-5


@gpu
def test_langchain_wrapper_on_cuda(quantized_dir):
    pytest.importorskip("langchain_core", reason="langchain-core is not installed on this machine")
    from langchain_quant import QuantLLM

    llm = QuantLLM.from_model_id(str(quantized_dir), device="cuda", pipeline_kwargs={"max_new_tokens": 4})
    assert isinstance(llm.invoke("hello world"), str)


def test_offline_model_dir_round_trips(tmp_path):
    """Runs everywhere: the offline fixture itself (CLI quantize of a locally made model)."""
    from quant_core.cli import main

    src = offline_model_dir(tmp_path / "float")
    assert main(["quantize", str(src), "-o", str(tmp_path / "q"), "--group-size", "32"]) == 0
    assert (tmp_path / "q" / "config.json").is_file()

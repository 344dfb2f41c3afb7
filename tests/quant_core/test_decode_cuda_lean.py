"""The CUDA lean step writes the greedy tokens of transformers' own forward pass.

Without a GPU the step runs eagerly on CPU tensors with its Triton kernels interpreted (the device
check is lifted for that); with one, on CUDA, graph-replayed as the product runs it.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of triton (see kernels/triton_jit.py)
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="Triton is not installed (pip install .[gpu])")

from quant_core.config import QuantConfig  # noqa: E402
from quant_core.decode import cuda_lean, greedy_generate, make_decoder  # noqa: E402
from quant_core.decode.cuda_lean import CudaLeanDecoder  # noqa: E402
from quant_core.decode.generate import cuda_lean_fits  # noqa: E402
from quant_core.decode.static import StaticDecoder  # noqa: E402
from quant_core.errors import UnsupportedModelError  # noqa: E402
from quant_core.quantize import quantize  # noqa: E402

from test_decode_lean import FAMILIES, prompt, tiny  # noqa: E402 - pytest puts this directory on sys.path

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
GPU_ONLY = pytest.mark.skipif(not CUDA, reason="CUDA graphs and the default pick need a CUDA device")


@pytest.fixture
def on_cpu(monkeypatch):
    """Lift the CUDA-device check so that the step's logic runs here (interpreted kernels, no graph)."""
    if not CUDA:
        monkeypatch.setattr(cuda_lean, "cuda_lean_reason", lambda model, max_len: None)


def decoder(model, b, max_len, **kw):
    return CudaLeanDecoder(model, b, max_len, cuda_graph=CUDA, **kw)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_float_families_match_transformers(family, on_cpu):
    model = tiny(family).to(DEVICE)
    ids = prompt().to(DEVICE)
    want, _ = greedy_generate(model, ids, 8, static_cache=False)
    got, _ = greedy_generate(model, ids, 8, decoder=decoder(model, 2, 7 + 8))
    assert len(set(want[0].tolist())) > 3  # tokens vary: a real comparison
    assert torch.equal(want, got)


def test_logits_match_the_module_path_and_padding_is_ignored(on_cpu):
    model = tiny("llama").to(DEVICE)
    ids = prompt(b=2, t=6).to(DEVICE)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1: a 3-token prompt, left-padded
    ref, lean = StaticDecoder(model, 2, 12, cuda_graph=False), decoder(model, 2, 12)
    a, b = ref.prefill(ids, mask), lean.prefill(ids, mask)
    for _ in range(4):
        # fp32: the kernels sum in another order than PyTorch, nothing else differs
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (a - b).abs().max()
        token = a.argmax(-1)
        a, b = ref.step(token), lean.step(token)
    alone = decoder(model, 1, 12)
    c = alone.prefill(ids[1:, 3:])
    assert torch.allclose(c, lean.prefill(ids, mask)[1:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_both_attentions_agree_on_a_padded_batch(family, on_cpu):
    model = tiny(family).to(DEVICE)
    ids = prompt(b=2, t=6).to(DEVICE)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    runs = {}
    for attention in ("triton", "sdpa"):
        dec = decoder(model, 2, 14, attention=attention)
        logits = [dec.prefill(ids, mask)]
        for _ in range(5):
            logits.append(dec.step(logits[-1].argmax(-1)))
        runs[attention] = torch.stack(logits, 1)
    assert torch.allclose(runs["triton"], runs["sdpa"], rtol=1e-4, atol=1e-4)
    assert torch.equal(runs["triton"].argmax(-1), runs["sdpa"].argmax(-1))


def test_long_caches_take_sdpa(on_cpu):
    model = tiny("llama").to(DEVICE)
    assert decoder(model, 1, cuda_lean.TRITON_ATTENTION_MAX_LEN).attention == "triton"
    assert decoder(model, 1, cuda_lean.TRITON_ATTENTION_MAX_LEN + 1).attention == "sdpa"


def test_quantized_model_matches_its_module_path(on_cpu):
    model = quantize(tiny("qwen2").to(DEVICE), QuantConfig(weight_dtype="int4", group_size=32,
                                                           modules_to_not_convert=[]))
    ids = prompt().to(DEVICE)
    want, _ = greedy_generate(model, ids, 6, decoder=StaticDecoder(model, 2, 13, cuda_graph=False))
    got, _ = greedy_generate(model, ids, 6, decoder=decoder(model, 2, 13))
    assert torch.equal(want, got)


def test_stacked_float_projections_give_the_same_tokens(on_cpu):
    model = tiny("llama").to(DEVICE)
    ids = prompt().to(DEVICE)
    want, _ = greedy_generate(model, ids, 6, decoder=decoder(model, 2, 13))
    dec = decoder(model, 2, 13, stack_float=True)
    assert dec.m.layers[0].qkv.weight is not None
    got, _ = greedy_generate(model, ids, 6, decoder=dec)
    assert torch.equal(want, got)


def test_a_cpu_model_is_refused_with_its_reason():
    model = tiny("llama")
    assert "CUDA device" in cuda_lean_fits(model, 16)
    with pytest.raises(UnsupportedModelError, match="CUDA device"):
        CudaLeanDecoder(model, 1, 16)


def test_a_packed_tied_embedding_keeps_the_module_path():
    from quant_core.decode.cuda_model import cuda_lean_reason
    from quant_core.output_head import QuantEmbedding

    model = tiny("llama")
    model.model.embed_tokens = QuantEmbedding(model, torch.float32)
    assert "QuantEmbedding" in cuda_lean_reason(model, 16)


def test_decoder_guards_its_size(on_cpu):
    model = tiny("llama").to(DEVICE)
    dec = decoder(model, 1, 8)
    with pytest.raises(RuntimeError, match="prefill"):
        dec.step(torch.tensor([3], device=DEVICE))
    dec.prefill(prompt(b=1, t=7).to(DEVICE))
    dec.step(torch.tensor([3], device=DEVICE))
    with pytest.raises(ValueError, match="full"):
        dec.step(torch.tensor([3], device=DEVICE))


@GPU_ONLY
def test_make_decoder_switch(monkeypatch):
    model = tiny("llama").to("cuda")
    monkeypatch.setenv("QUANTLLM_CUDA_LEAN", "1")
    assert isinstance(make_decoder(model, 1, 16), CudaLeanDecoder)
    monkeypatch.setenv("QUANTLLM_CUDA_LEAN", "0")
    assert isinstance(make_decoder(model, 1, 16), StaticDecoder)
    assert isinstance(make_decoder(model, 1, 16, lean=True), CudaLeanDecoder)

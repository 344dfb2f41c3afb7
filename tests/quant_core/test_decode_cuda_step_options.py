"""Options of the CUDA lean step that change how its kernels launch, not what they compute. Programmatic
dependent launch of its Triton kernels (``pdl``): the step must give the logits it gives without it, bit for
bit. The attention's block of cache positions (``attention_block``): the same logits to fp32 rounding.

Without a GPU the step runs eagerly with its Triton kernels interpreted, and PDL is off (the interpreter
has no launches to overlap).
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the first import of triton (see kernels/triton_jit.py)
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="Triton is not installed (pip install .[gpu])")

from quant_core.config import QuantConfig  # noqa: E402
from quant_core.decode.cuda_lean import attention_block_for  # noqa: E402
from quant_core.kernels.triton_jit import pdl_launch_supported  # noqa: E402
from quant_core.quantize import quantize  # noqa: E402

from test_decode_cuda_lean import CUDA, DEVICE, decoder, on_cpu  # noqa: E402, F401 - on_cpu is a fixture
from test_decode_lean import prompt, tiny  # noqa: E402

PDL_GPU = pytest.mark.skipif(not (CUDA and pdl_launch_supported("cuda")),
                             reason="PDL needs a compiled Triton with launch_pdl and a GPU of compute capability 9.0+")


def logits_along(model, steps: int = 10, **options) -> torch.Tensor:
    """Prefill of a left-padded batch of 2, then ``steps`` greedy steps: [2, steps + 1, vocab]."""
    ids = prompt(b=2, t=6).to(DEVICE)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    dec = decoder(model, 2, 6 + steps + 1, attention="triton", **options)
    out = [dec.prefill(ids, mask)]
    for _ in range(steps):
        out.append(dec.step(out[-1].argmax(-1)))
    return torch.stack(out, 1)


@pytest.mark.usefixtures("on_cpu")
def test_pdl_is_on_where_it_can_run_unless_switched_off(monkeypatch):
    model = tiny("llama").to(DEVICE)
    monkeypatch.delenv("QUANTLLM_LEAN_PDL", raising=False)
    assert decoder(model, 1, 8).pdl is pdl_launch_supported(DEVICE)
    assert decoder(model, 1, 8, pdl=True).pdl is pdl_launch_supported(DEVICE)
    assert decoder(model, 1, 8, pdl=False).pdl is False
    monkeypatch.setenv("QUANTLLM_LEAN_PDL", "0")
    assert decoder(model, 1, 8).pdl is False


@PDL_GPU
@pytest.mark.parametrize("quantized", [False, True])
def test_pdl_launches_give_the_same_logits(quantized):
    """Graph-replayed with PDL: a kernel that read what the kernel before it writes ahead of its wait would
    race and differ here (quantized: our CUDA GEMMs, which stream weights before their wait, between them)."""
    model = tiny("llama").to("cuda", torch.bfloat16)  # bf16: the activations our CUDA GEMMs take
    if quantized:
        quantize(model, QuantConfig(weight_dtype="int4", group_size=32, modules_to_not_convert=[]))
    want = logits_along(model, 12, pdl=False)
    again = logits_along(model, 12, pdl=False)
    got = logits_along(model, 12, pdl=True)
    assert torch.equal(again, want), "the step without PDL is not deterministic here: no bit-equality to test"
    assert torch.equal(got, want), (got - want).abs().max()


@pytest.mark.usefixtures("on_cpu")
def test_attention_blocks_give_the_same_logits():
    model = tiny("llama").to(DEVICE)
    want = logits_along(model, attention_block=32)  # 17 positions at the end: one block or part of one
    for block in (64, 128):
        got = logits_along(model, attention_block=block)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (block, (got - want).abs().max())


def test_wide_attention_blocks_while_the_programs_fit_on_the_sms():
    assert attention_block_for(32, torch.device("cpu")) == 64
    if CUDA:
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        assert attention_block_for(sms, torch.device("cuda")) == 128
        assert attention_block_for(sms + 1, torch.device("cuda")) == 64

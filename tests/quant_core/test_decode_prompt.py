"""The lean step's prompt in one C++ call (csrc/qstep.cpp's qprefill, causal qattend_prompt)."""
from __future__ import annotations

import ctypes

import pytest
import torch
from test_decode_lean import NEEDS_KERNELS, prompt, tiny  # pytest puts this directory on sys.path

from quant_core.config import QuantConfig
from quant_core.decode import LeanDecoder
from quant_core.decode import lean as lean_module
from quant_core.kernels import cpu_simd
from quant_core.quantize import quantize


@pytest.fixture(autouse=True)
def q8_everywhere(monkeypatch):
    """The int8-block prompt path on every build (the default "auto" takes it on AVX-512 VNNI builds only)."""
    monkeypatch.setattr(cpu_simd, "PROMPT_PATH", "q8")


def padded_batch():
    ids = prompt(3, 9, seed=5)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    mask[2, :4] = 0
    return ids, mask


@NEEDS_KERNELS
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "phi3"])
def test_one_call_prompt_matches_the_prompt_layer_by_layer(family, monkeypatch):
    """Same kernels and operations, only attention differs (C++ against PyTorch's SDPA, summation order),
    but a 1e-7 difference can flip an activation's int8 rounding (one level: 1/127 of its block's largest)
    and the next layers carry it: measured on the VNNI int8 GEMM 1.6e-7..2e-5 of the largest logit,
    up to 4.3e-5 on the next step, and 2e-7 of the largest cached key and value except phi3's 2.5e-3
    (a flip in its second layer's input). Allowed: 2e-3 on logits, 1e-2 on the caches."""
    model = quantize(tiny(family), QuantConfig(weight_dtype="int4", group_size=32, modules_to_not_convert=[]))
    ids, mask = padded_batch()
    one = LeanDecoder(model, 3, 20)
    got = one.prefill(ids, mask)
    assert one.layer_step is not None and one.layer_step.prompt_rows is not None  # the one-call prompt ran
    monkeypatch.setattr(lean_module, "prompt_reason", lambda m, rows: "layer by layer")
    layered = LeanDecoder(model, 3, 20)
    want = layered.prefill(ids, mask)
    assert layered.layer_step is None
    assert torch.allclose(got, want, atol=2e-3 * want.abs().max().item())
    for a, b in ((one.k_cache, layered.k_cache), (one.v_cache, layered.v_cache)):
        assert torch.allclose(a, b, atol=1e-2 * b.abs().max().item())
    tokens = want.argmax(-1)
    assert torch.allclose(one.step(tokens), layered.step(tokens), atol=2e-3 * want.abs().max().item())


@NEEDS_KERNELS
def test_prompts_without_the_int8_block_path_run_layer_by_layer():
    """nf4's levels are not integers: its prompt rows run as any batch, from Python, and decode as before."""
    model = quantize(tiny("llama"), QuantConfig(weight_dtype="nf4", group_size=64, modules_to_not_convert=[]))
    ids, mask = padded_batch()
    dec = LeanDecoder(model, 3, 20)
    logits = dec.prefill(ids, mask)
    assert dec.one_call and dec.layer_step is None
    dec.step(logits.argmax(-1))
    assert dec.layer_step.prompt_rows is None


@NEEDS_KERNELS
def test_prompt_attention_against_sdpa_with_the_lean_mask():
    """qattend_prompt against PyTorch's SDPA with the lean prefill's mask: causal and padding, each
    position seeing itself; grouped heads; only positions [0, T) of a longer cache are read."""
    model = quantize(tiny("llama"), QuantConfig(weight_dtype="int4", group_size=32, modules_to_not_convert=[]))
    lib = LeanDecoder(model, 1, 4).ops.lib
    gen = torch.Generator().manual_seed(0)
    b, heads, kv_heads, t, d, maxlen = 2, 6, 2, 7, 32, 12
    q = torch.randn(b, heads, t, d, generator=gen)
    kc, vc = torch.randn(b, kv_heads, maxlen, d, generator=gen), torch.randn(b, kv_heads, maxlen, d, generator=gen)
    valid = torch.ones(b, maxlen, dtype=torch.bool)
    valid[1, :3] = False
    out = torch.empty(b * t, heads * d)
    ptr = lambda x: ctypes.c_void_p(x.data_ptr())  # noqa: E731
    lib.qattend_prompt(ptr(q), ptr(kc), ptr(vc), b, heads, kv_heads, d, maxlen, t, ptr(valid), 0.3, ptr(out), 2)
    mask = (torch.ones(t, t, dtype=torch.bool).tril() & valid[:, None, None, :t]) | torch.eye(t, dtype=torch.bool)
    want = torch.nn.functional.scaled_dot_product_attention(q, kc[:, :, :t], vc[:, :, :t], attn_mask=mask,
                                                            scale=0.3, enable_gqa=True)
    assert torch.allclose(out, want.transpose(1, 2).reshape(b * t, heads * d), atol=1e-5)


@NEEDS_KERNELS
def test_a_left_padded_prompt_gets_the_bits_it_gets_alone():
    """With int8 prompt activations a last-bit difference can flip a rounding and the greedy text with it
    (SmolLM2's chain.batch of 16 differed from its invoke loop in one answer): attention skips masked
    positions rather than weighing them zero, so a padded row computes exactly what it does alone."""
    model = quantize(tiny("llama"), QuantConfig(weight_dtype="int4", group_size=32, modules_to_not_convert=[]))
    long_ids, short_ids = prompt(1, 23, seed=1), prompt(1, 20, seed=2)  # 3 padding positions: the 16-wide
    batch = torch.cat([long_ids, torch.cat([torch.zeros(1, 3, dtype=torch.long), short_ids], 1)])  # sums shift
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    both, alone = LeanDecoder(model, 2, 30), LeanDecoder(model, 1, 30)
    a, b = both.prefill(batch, mask), alone.prefill(short_ids)
    assert both.layer_step.prompt_rows is not None and torch.equal(a[1], b[0])
    for _ in range(4):
        tokens = a.argmax(-1)
        a, b = both.step(tokens), alone.step(tokens[1:])
        assert torch.equal(a[1], b[0])

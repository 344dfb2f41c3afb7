"""The CUDA lean step's Triton kernels against the PyTorch operations of transformers' modules.

Without a GPU they run through Triton's interpreter on CPU tensors (small shapes); with one, compiled.
Tolerances: fp32 to rounding (1e-5 relative); bf16 one or two units in the last place where the
kernel sums in fp32 and rounds once what PyTorch rounds after each operation (relative L2 error).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # must precede the first import of triton (see kernels/triton_jit.py)
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="Triton is not installed (pip install .[gpu])")

from quant_core.decode import cuda_ops  # noqa: E402
from quant_core.decode.cuda_model import GpuNorm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16: Triton's interpreter truncates each cast (compiled, it rounds to nearest even), which biases a chain
# of roundings (the q/k norm, then rotary) towards zero: twice the compiled tolerance there
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2 if DEVICE == "cuda" else 2e-2}


def rand(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def rms_ref(x, w, eps):
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotate_ref(x, cos, sin):
    """transformers' apply_rotary_pos_emb on the first cos.shape[-1] dims of x [rows, heads, D]."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    rd = cos.shape[-1]
    rot = x[..., :rd]
    turned = torch.cat((-rot[..., rd // 2:], rot[..., : rd // 2]), -1)
    return torch.cat((rot * cos + turned * sin, x[..., rd:]), -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("add", [False, True])
def test_add_rms_norm(dtype, add):
    x, y, w = rand(3, 80, dtype=dtype), rand(3, 80, dtype=dtype, seed=1), rand(80, dtype=dtype, seed=2)
    residual = x + y if add else x.clone()
    out = cuda_ops.add_rms_norm(x, y if add else None, w, 1e-6)
    if dtype == torch.float32 or DEVICE == "cuda":  # the sum is written back rounded as PyTorch rounds it
        assert torch.equal(x, residual)
    else:  # Triton's interpreter truncates to bf16 (compiled, it rounds to nearest even): one unit at most
        assert ((x.float() - residual.float()).abs() <= residual.float().abs() * 2 ** -7).all()
    assert rel(out, rms_ref(residual, w, 1e-6)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d,rd,qk_norm", [(16, 16, False), (24, 12, False), (16, 16, True)])
def test_rope_cache_rotates_and_writes_the_cache(dtype, d, rd, qk_norm):
    b, t, heads, kv, maxlen, slot = 2, 3, 4, 2, 9, 4
    qkv = rand(b * t, (heads + 2 * kv) * d, dtype=dtype)
    angles = rand(b * t, rd // 2, seed=3)
    cos, sin = (torch.cat((f(angles), f(angles)), -1).to(dtype) for f in (torch.cos, torch.sin))
    norms = (GpuNorm(rand(d, dtype=dtype, seed=4), 1e-6), GpuNorm(rand(d, dtype=dtype, seed=5), 1e-6)) \
        if qk_norm else (None, None)
    k_cache = torch.zeros(b, kv, maxlen, d, dtype=dtype, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    q = cuda_ops.rope_cache(qkv, t, heads, kv, d, cos, sin, *norms, k_cache, v_cache,
                            torch.tensor([slot], device=DEVICE))
    q_in, k_in, v_in = qkv.view(b * t, heads + 2 * kv, d).split([heads, kv, kv], 1)
    if qk_norm:
        q_in, k_in = rms_ref(q_in, norms[0].weight, 1e-6), rms_ref(k_in, norms[1].weight, 1e-6)
    assert rel(q, rotate_ref(q_in, cos, sin)) < TOL[dtype]
    k_want = rotate_ref(k_in, cos, sin).view(b, t, kv, d).transpose(1, 2)
    assert rel(k_cache[:, :, slot: slot + t], k_want) < TOL[dtype]
    assert torch.equal(v_cache[:, :, slot: slot + t], v_in.reshape(b, t, kv, d).transpose(1, 2))
    untouched = torch.ones(maxlen, dtype=torch.bool)
    untouched[slot: slot + t] = False
    assert not k_cache[:, :, untouched].any() and not v_cache[:, :, untouched].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d,block_n", [(16, 32), (24, 32), (16, 64), (16, 128)])
def test_attend_over_the_valid_cache_positions(dtype, d, block_n):
    b, heads, kv, maxlen, slot = 2, 4, 2, 70, 66  # 67 positions: three blocks of 32 (two of 64), the last partial
    q, k_cache, v_cache = rand(b, heads, d, dtype=dtype), rand(b, kv, maxlen, d, dtype=dtype, seed=1), \
        rand(b, kv, maxlen, d, dtype=dtype, seed=2)
    valid = torch.zeros(b, maxlen, dtype=torch.bool, device=DEVICE)
    valid[0, : slot + 1] = True
    valid[1, 40: slot + 1] = True  # a left-padded row: its first block is padding only
    out = cuda_ops.attend(q, k_cache, v_cache, valid, torch.tensor([slot], device=DEVICE), d ** -0.5,
                          block_n=block_n)
    k = k_cache[:, :, : slot + 1].repeat_interleave(heads // kv, 1)
    v = v_cache[:, :, : slot + 1].repeat_interleave(heads // kv, 1)
    want = F.scaled_dot_product_attention(q[:, :, None].float(), k.float(), v.float(),
                                          attn_mask=valid[:, None, None, : slot + 1], scale=d ** -0.5)
    assert rel(out, want.reshape(b, heads * d)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu(dtype):
    gu = rand(3, 2 * 1100, dtype=dtype)  # two column blocks, the second partial
    want = F.silu(gu[:, :1100]) * gu[:, 1100:]
    assert rel(cuda_ops.swiglu(gu, 1100), want) < TOL[dtype]

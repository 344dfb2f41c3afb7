"""Peer weight-only kernels for ``gpu_speed.py --peers``: bitsandbytes NF4 and gemlite int4 g128.

Each builder takes a bf16 weight ``[N, K]`` on the GPU (an ``nn.Linear`` weight: out × in) and
returns ``forward(x)``, which computes ``x @ weight.T`` for bf16 ``x [M, K]`` through the peer's
own quantized format and kernels, or raises (ImportError where the library is missing, or
whatever the library raises); ``gpu_speed.py`` turns an exception into a short reason.
Neither library is a dependency of the project; see ``gpu_speed.py``'s docstring for how they
are made importable on the GPU machine.

APIs as read in their sources (bitsandbytes 0.50.2 wheel, gemlite 0.6.0.post2 sdist):

* bitsandbytes: ``bitsandbytes.functional.quantize_4bit(w, blocksize=64, quant_type="nf4",
  compress_statistics=False)`` -> packed uint8 ``[N*K/2, 1]`` + ``QuantState`` (shape ``[N, K]``,
  fp32 absmax per 64 weights), then ``bitsandbytes.matmul_4bit(x, packed, quant_state=state)``,
  the call ``bnb.nn.Linear4bit.forward`` makes. In 0.50.2 it goes to
  ``torch.ops.bitsandbytes.gemm_4bit`` for every M (no separate M=1 gemv branch any more): the
  CUDA dispatch runs the fused kernel for M <= 4 and, above, picks fused kernel or
  dequantize + ``F.linear`` by a per-architecture heuristic.
* gemlite: a bf16 weight quantized here to asymmetric int4, groups of 128 along K (min/max
  scale and zero point, HQQ's convention ``W ~ (Wq - zero) * scale``), handed to
  ``gemlite.helper.A16Wn.from_weights(Wq uint8 [N, K], scales, zeros, W_nbits=4,
  group_size=128)``, which builds a ``GemLiteLinearTriton`` (bf16 in/out, fp32 accumulation,
  codes packed 8 per int32 along K); ``forward`` picks GEMV_REVSPLITK for M <= 4, GEMM_SPLITK
  for M < 64 and GEMM above, autotuned with gemlite's "fast" setting (its shipped
  ``configs/h100.json`` is loaded on an H100). gemlite is pure Python + Triton (no compiled
  parts, version hard-coded in ``__init__``), so an extracted sdist on ``sys.path`` imports.
"""
from __future__ import annotations

import sys
import types

import torch


def bnb_nf4(weight: torch.Tensor):
    """bitsandbytes NF4, blocksize 64, fp32 absmax (no double quantization)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_f

    packed, state = bnb_f.quantize_4bit(weight.contiguous(), blocksize=64, quant_type="nf4",
                                        compress_statistics=False)
    return lambda x: bnb.matmul_4bit(x, packed, quant_state=state)


def _tqdm_stub_if_missing() -> None:
    """gemlite.helper imports tqdm at import time (progress bars only, unused here)."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        stub = types.ModuleType("tqdm")
        stub.tqdm = lambda iterable=None, *args, **kwargs: iterable
        sys.modules["tqdm"] = stub


def gemlite_int4_g128(weight: torch.Tensor, group_size: int = 128):
    """gemlite A16W4: asymmetric int4 (scale + zero per group of 128 along K), bf16 activations."""
    _tqdm_stub_if_missing()
    from gemlite.helper import A16Wn

    n, k = weight.shape
    w = weight.float().view(n, k // group_size, group_size)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp_min(1e-6)
    zero = (-lo / scale).round()
    codes = (w / scale + zero).round().clamp_(0, 15).to(torch.uint8).view(n, k)
    layer = A16Wn(device=weight.device, dtype=torch.bfloat16).from_weights(
        codes, scale.view(n, -1).to(torch.bfloat16), zero.view(n, -1).to(torch.bfloat16),
        W_nbits=4, group_size=group_size)
    return layer.forward  # GemLiteLinearTriton.forward_auto_no_warmup, bound to the layer


# (column label, builder, module whose version and location the header reports)
PEERS = [("bnb nf4 (bs64)", bnb_nf4, "bitsandbytes"), ("gemlite int4 g128", gemlite_int4_g128, "gemlite")]


def short_reason(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:60].replace("|", "/")
    return f"n/a: {type(exc).__name__}: {text}"


def probe(build, module: str, k: int = 4096, n: int = 1024, rows=(1, 16, 64)) -> str:
    """Import and build the peer on a random weight; return a header line with its version and
    its output's relative error against bf16 ``F.linear`` (about 0.1 is 4-bit rounding; a
    value near 1 or above means the weight went in wrong). Raises if the peer cannot run."""
    import importlib

    weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    forward = build(weight)
    errors = []
    for m in rows:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref = torch.nn.functional.linear(x.float(), weight.float())
        out = forward(x)
        if tuple(out.shape) != (m, n):
            raise RuntimeError(f"output shape {tuple(out.shape)}, expected {(m, n)}")
        errors.append(((out.float() - ref).norm() / ref.norm()).item())
    mod = importlib.import_module(module)
    flag = "" if max(errors) < 0.3 else " -- SUSPICIOUS, check the weight layout"
    return (f"{module} {getattr(mod, '__version__', '?')} from {mod.__path__[0]}; relative error vs bf16 "
            f"(K={k}, N={n}, M={'/'.join(map(str, rows))}): {' / '.join(f'{e:.3f}' for e in errors)}{flag}")

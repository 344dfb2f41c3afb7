"""The decode step's layers as one C++ call (csrc/qstep.cpp): the plan of pointers, built once.

It applies when every projection of every layer runs on the C++ CPU kernels of one library,
reading its activations as they are (no act-order permutation, no padding); otherwise the
lean step calls the same operations one by one from Python. A prompt's layers run as one call
too (``LayerStep.prompt``) where every projection's prompt path is the int8-block one
(``_CpuSimdKernel.prompt_q8``): the calls from Python cost more than the float work on small models.
"""
from __future__ import annotations

import ctypes

import torch

from ..kernels.cpu_simd import PATHS
from .lean_model import LeanModel
from .projection import Projection

_p, _i, _f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


class CProj(ctypes.Structure):
    _fields_ = [("segs", _p), ("ends", _p), ("nseg", _i), ("kind", _i), ("N", _i), ("Kp", _i), ("G", _i),
                ("wpg", _i), ("sc", _p), ("of", _p), ("lut", _p), ("bias", _p), ("path", _i), ("prompt", _i),
                ("prompt_block", _i)]


class CLayer(ctypes.Structure):
    _fields_ = [("qkv", CProj), ("o", CProj), ("gate_up", CProj), ("down", CProj), ("norm1", _p), ("norm2", _p),
                ("q_norm", _p), ("k_norm", _p), ("eps1", _f), ("eps2", _f), ("qk_eps", _f), ("k_cache", _p),
                ("v_cache", _p)]


class CStepPlan(ctypes.Structure):
    _fields_ = [("B", _i), ("heads", _i), ("kv_heads", _i), ("D", _i), ("rd", _i), ("H", _i), ("I", _i),
                ("maxlen", _i), ("nthreads", _i), ("scale", _f), ("h", _p), ("qkv", _p), ("q", _p), ("att", _p),
                ("gu", _p), ("act", _p)]


def _addr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def plan_reason(m: LeanModel) -> str | None:
    """Why the layers cannot run as one C++ call (None: they can)."""
    projections = [p for layer in m.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    if not all(p.fused and p.direct for p in projections):
        return "a projection is not on the C++ CPU kernels (or needs permuted / padded activations)"
    if len({id(p.kernel.lib) for p in projections}) != 1:
        return "projections use different kernel libraries"
    return None


def prompt_reason(m: LeanModel, lengths: list[int]) -> str | None:
    """Why prompts of these real lengths cannot run as one C++ call (None: they can): every prompt's
    rows must take the int8-block path there, as they would alone."""
    why = plan_reason(m)
    if why:
        return why
    for layer in m.layers:
        for k in (layer.qkv.kernel, layer.o.kernel, layer.gate_up.kernel, layer.down.kernel):
            if not k.prompt_q8 or any(k.prompt_route(n) not in ("q8", "q8_gemm") for n in lengths):
                return "a projection's prompt rows do not take the int8-block path"
    return None


def _cproj(p: Projection) -> CProj:
    w = p.kernel.w
    segs, ends, nseg, kind, n, kp, g, wpg, sc, of = w.layer_args()
    return CProj(ctypes.cast(segs, _p), ctypes.cast(ends, _p), nseg, kind, n, kp, g, wpg, sc, of, _addr(w.lut),
                 _addr(p.bias), PATHS.index(p.kernel.path), 2 if p.kernel.q8_gemm else int(p.kernel.prompt_q8),
                 p.kernel.prompt_block())


class LayerStep:
    """Runs every decoder layer of one step for ``batch_size`` new tokens in one C++ call."""

    def __init__(self, m: LeanModel, batch_size: int, k_cache: torch.Tensor, v_cache: torch.Tensor, rotary_dim: int):
        self.lib = m.layers[0].qkv.kernel.lib
        self.batch_size, self.rotary_dim, self.maxlen = batch_size, rotary_dim, k_cache.shape[3]
        self.m = m  # keeps every tensor the plan points into alive
        self.plan, self.buffers = self._plan(batch_size)
        self.prompt_rows = None  # rows of the last prompt run in one call (its scratch buffers live for the call only)
        layers = []
        for index, layer in enumerate(m.layers):
            qk = layer.q_norm is not None
            layers.append(CLayer(
                _cproj(layer.qkv), _cproj(layer.o), _cproj(layer.gate_up), _cproj(layer.down),
                layer.norm1.weight.data_ptr(), layer.norm2.weight.data_ptr(),
                layer.q_norm.weight.data_ptr() if qk else None, layer.k_norm.weight.data_ptr() if qk else None,
                layer.norm1.eps, layer.norm2.eps, layer.q_norm.eps if qk else 0.0,
                k_cache[index].data_ptr(), v_cache[index].data_ptr()))
        self.layers = (CLayer * len(layers))(*layers)
        self.seconds = None  # set to a float64 tensor [3] to add each call's matmul / attention / other time

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: int,
                 valid: torch.Tensor | None) -> torch.Tensor:
        """``x`` [B, H] float32 contiguous, updated in place; cos/sin [B, rd] contiguous."""
        self.plan.nthreads = torch.get_num_threads()  # the caller's setting now (the engine's n_threads)
        self.lib.qstep(ctypes.byref(self.plan), self.layers, len(self.layers), _p(x.data_ptr()),
                       _p(cos.data_ptr()), _p(sin.data_ptr()), slot, None if valid is None else _p(valid.data_ptr()),
                       None if self.seconds is None else _p(self.seconds.data_ptr()))
        return x

    def _plan(self, rows: int) -> tuple[CStepPlan, list[torch.Tensor]]:
        """A plan whose scratch buffers hold ``rows`` token rows."""
        m, hidden = self.m, self.m.layers[0].qkv.in_features
        buffers = [torch.empty(rows, n) for n in (hidden, m.layers[0].qkv.out_features, m.heads * m.head_dim,
                                                  m.heads * m.head_dim, 2 * m.intermediate, m.intermediate)]
        plan = CStepPlan(self.batch_size, m.heads, m.kv_heads, m.head_dim, self.rotary_dim, hidden, m.intermediate,
                         self.maxlen, torch.get_num_threads(), m.scaling, *(t.data_ptr() for t in buffers))
        return plan, buffers

    def prompt(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, t: int,
               valid: torch.Tensor | None) -> torch.Tensor:
        """A prompt of ``t`` tokens per row written at cache positions [0, t): ``x`` [B * t, H] float32
        contiguous, updated in place; cos/sin [B * t, rd] contiguous (prompt_reason must hold)."""
        rows = self.batch_size * t
        # scratch for this prompt only (~29 KB a row on SmolLM2): kept, a 512-token prompt's 15 MB stayed
        # resident through the decode that followed
        plan, buffers = self._plan(rows)
        plan.nthreads = torch.get_num_threads()
        self.lib.qprefill(ctypes.byref(plan), self.layers, len(self.layers), _p(x.data_ptr()), _p(cos.data_ptr()),
                          _p(sin.data_ptr()), t, None if valid is None else _p(valid.data_ptr()),
                          None if self.seconds is None else _p(self.seconds.data_ptr()))
        self.prompt_rows = rows
        return x

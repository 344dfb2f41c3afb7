"""The lean decode step: a decoder-only model's forward pass without transformers' modules.

On a small model the matmuls are a small part of a token: transformers' per-layer Python
(module calls, cache objects, mask building, rotary per layer) dominated SmolLM2's decode. Here
one step is, per layer: norm, one fused q/k/v matmul, rotary and K/V written in place into a
cache allocated once, one attention call, the output projection added into the residual by
the kernel itself, norm, one fused gate/up matmul, SwiGLU, the down projection added into the
residual. Same interface as ``StaticDecoder``::

    dec = LeanDecoder(model, batch_size=B, max_len=prompt_len + max_new)
    logits = dec.prefill(input_ids, attention_mask)   # [B, vocab] float32 at the last position
    logits = dec.step(next_ids)                       # next_ids: [B]; repeat
    dec.reset()

The residual stream, norms, rotary and the cache are float32 whatever the model's dtype
(quantized kernels take float32 activations anyway); float linears get their own dtype.
"""
from __future__ import annotations

import torch

from .. import cpu_features
from ..errors import UnsupportedModelError
from ..kernels.cpu_simd import CpuAvx2Kernel, CpuAvx512Kernel, _library_or_reason
from .lean_model import LeanLayer, LeanModel, lean_model
from .lean_ops import CppOps, TorchOps
from .lean_plan import LayerStep, plan_reason, prompt_reason
from .prompt_check import check_prompt


class LeanDecoder:
    """Prefill then one token per step over a preallocated float32 KV cache of ``max_len`` positions.

    Left-padded batches work: pass the prompt's 2-D ``attention_mask``; positions follow the
    mask (a padded row's first real token is position 0), as in ``StaticDecoder``.
    """

    def __init__(self, model, batch_size: int, max_len: int, ops: str | None = None):
        """``ops``: "cpp" (csrc/qdecode.cpp, the default where the CPU kernels build) or "torch"."""
        if max_len <= 0 or batch_size <= 0:
            raise ValueError(f"batch_size and max_len must be positive, got {batch_size}, {max_len}")
        window = getattr(model.config, "sliding_window", None)
        if window and max_len > window:
            raise UnsupportedModelError(f"a cache of {max_len} positions exceeds the sliding window ({window}); "
                                        "the lean step has no sliding window: use StaticDecoder")
        self.model, self.batch_size, self.max_len = model, batch_size, max_len
        self.lean = m = lean_model(model)
        shape = (len(m.layers), batch_size, m.kv_heads, max_len, m.head_dim)
        self.k_cache, self.v_cache = torch.zeros(shape), torch.zeros(shape)
        self.logits = torch.empty(batch_size, m.head.out_features)
        self.ops = _ops(m, ops)
        self.layer_step = None  # built at the first one-call prefill or step, once the rotary dims are known
        self.one_call = isinstance(self.ops, CppOps) and plan_reason(m) is None
        self.reset()

    def reset(self) -> None:
        self.length = 0
        self.valid = None  # [B, max_len] bool: positions holding real tokens
        self.padded = False
        self.next_pos = None

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_prompt(input_ids.shape, self.batch_size, self.max_len)
        b, t = input_ids.shape
        self.reset()
        mask = torch.ones(b, t, dtype=torch.long) if attention_mask is None else attention_mask.to("cpu", torch.long)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        self.valid = torch.zeros(b, self.max_len, dtype=torch.bool)
        self.valid[:, :t] = mask.bool()
        self.padded = not bool(mask.bool().all())
        self.next_pos = positions[:, -1:] + 1
        lengths = mask.sum(-1).tolist()  # each prompt's real tokens: its rows take the kernels they take alone
        if self.one_call and prompt_reason(self.lean, lengths) is None:
            x = self._one_call_prompt(input_ids, positions)
        else:
            attn_mask = None
            if self.padded:  # causal and padding; each position also sees itself, so no row is all-masked
                causal = torch.ones(t, t, dtype=torch.bool).tril()
                attn_mask = (causal & self.valid[:, None, None, :t]) | torch.eye(t, dtype=torch.bool)
            x = self._forward(input_ids, positions, 0, attn_mask, prompt=lengths)
        self.length = t
        return self._logits(x.view(b, t, -1)[:, -1])

    @torch.inference_mode()
    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        if self.length >= self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions and is full; raise max_len")
        if self.valid is None:
            raise RuntimeError("call prefill() before step()")
        pos = self.length
        self.valid[:, pos] = True
        ids = next_ids.reshape(-1, 1).cpu()
        if self.one_call:
            x = self._one_call_step(ids, pos)
        else:
            attn_mask = self.valid[:, None, None, : pos + 1] if self.padded else None
            x = self._forward(ids, self.next_pos, pos, attn_mask)
        self.next_pos = self.next_pos + 1
        self.length += 1
        return self._logits(x)

    def _forward(self, ids, positions, slot, attn_mask, prompt: list[int] | None = None) -> torch.Tensor:
        """Hidden states [B * T, H] after every layer, for tokens ``ids`` [B, T] written at ``slot``;
        ``prompt``: the prompts' real lengths, whose projections take the kernels' prompt path (``Projection``)."""
        m = self.lean
        x = m.embed(ids).float().reshape(ids.numel(), -1).contiguous()
        cos, sin = (c.float().contiguous() for c in m.rotary(x, positions))
        for index, layer in enumerate(m.layers):
            self._layer(index, layer, x, ids.shape[1], cos, sin, slot, attn_mask, prompt)
        return x

    def _one_call_step(self, ids, pos: int) -> torch.Tensor:
        x, cos, sin = self._embed_rotary(ids, self.next_pos)
        return self._layer_step(cos.shape[-1])(x, cos, sin, pos, self.valid if self.padded else None)

    def _one_call_prompt(self, ids, positions) -> torch.Tensor:
        """The prompt's layers in one C++ call (csrc/qstep.cpp's qprefill): hidden states [B * T, H]."""
        x, cos, sin = self._embed_rotary(ids, positions)
        return self._layer_step(cos.shape[-1]).prompt(x, cos, sin, ids.shape[1], self.valid if self.padded else None)

    def _embed_rotary(self, ids, positions):
        """Embeddings [B * T, H] and rotary tables [B * T, rd] of tokens ``ids`` [B, T], float32 contiguous."""
        m, rows = self.lean, ids.numel()
        x = m.embed(ids).float().reshape(rows, -1).contiguous()
        cos, sin = (c.float().reshape(rows, -1).contiguous() for c in m.rotary(x, positions))
        return x, cos, sin

    def _layer_step(self, rotary_dim: int) -> LayerStep:
        if self.layer_step is None:
            self.layer_step = LayerStep(self.lean, self.batch_size, self.k_cache, self.v_cache, rotary_dim)
        return self.layer_step

    def _layer(self, index: int, layer: LeanLayer, x, t: int, cos, sin, slot: int, attn_mask,
               prompt: list[int] | None) -> None:
        m, b, ops = self.lean, self.batch_size, self.ops
        k_cache, v_cache = self.k_cache[index], self.v_cache[index]
        qkv = layer.qkv(ops.norm(x, layer.norm1), torch.empty(x.shape[0], layer.qkv.out_features), prompt=prompt)
        q = ops.rope_cache(qkv, b, t, m.heads, m.kv_heads, m.head_dim, cos, sin, layer.q_norm, layer.k_norm,
                           k_cache, v_cache, slot)
        att = ops.attend(q, k_cache, v_cache, slot + t, self.valid, attn_mask, m.scaling)
        layer.o(att, x, accumulate=True, prompt=prompt)
        gu = layer.gate_up(ops.norm(x, layer.norm2), torch.empty(x.shape[0], 2 * m.intermediate), prompt=prompt)
        layer.down(ops.swiglu(gu, m.intermediate), x, accumulate=True, prompt=prompt)

    def _logits(self, x_last: torch.Tensor) -> torch.Tensor:
        m = self.lean
        return m.head(self.ops.norm(x_last.contiguous(), m.norm), self.logits).clone()


def _ops(m: LeanModel, choice: str | None):
    """C++ operations from the same library as the model's kernels (or the CPU's best), else PyTorch's."""
    if choice == "torch":
        return TorchOps()
    kernel = next((p.kernel for layer in m.layers for p in (layer.qkv, layer.down) if p.fused), None)
    lib = kernel.lib if kernel is not None else _best_library()
    if lib is None:
        if choice == "cpp":
            raise UnsupportedModelError("the C++ decode operations need an AVX2 CPU and a C++ compiler")
        return TorchOps()
    return CppOps(lib)


def _best_library():
    for cls in (CpuAvx512Kernel, CpuAvx2Kernel):
        if cpu_features.at_least(cls.isa):
            lib, _ = _library_or_reason(cls.variant())
            if lib is not None:
                return lib
    return None

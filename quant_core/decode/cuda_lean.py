"""The lean decode step on CUDA: the CPU lean step's layer plan, Triton kernels for what is not a
linear (decode/cuda_ops.py), the whole step captured once in a CUDA graph.

Per layer: residual add + RMSNorm, one q/k/v call, rotary with the K/V cache write, attention over
the cache, the output projection, residual add + RMSNorm, one gate/up call, SwiGLU, the down
projection (its residual add is the next norm's). Same interface as ``StaticDecoder``::

    dec = CudaLeanDecoder(model, batch_size=B, max_len=prompt_len + max_new)
    logits = dec.prefill(input_ids, attention_mask)   # [B, vocab] at the last position, the model's dtype
    logits = dec.step(next_ids)                       # next_ids: [B]; repeat
"""
from __future__ import annotations

import os

import torch
from torch.nn import functional as F

from ..errors import UnsupportedModelError
from ..fused_projections import fuse_projections, fusion_wanted
from ..kernels.triton_jit import pdl_launch_supported
from . import cuda_ops as ops
from .cuda_model import GpuLayer, cuda_lean_reason, gpu_model
from .prompt_check import check_prompt

# cuda_ops.attend runs one program per (row, head) that walks the cache positions in turn: at 64-97
# positions it took 4.2 us a layer against 6.2 us for cuDNN's attention through SDPA (H200, synthetic 8B,
# batch 1); longer caches take SDPA, as transformers' modules do (no figure of ours beyond 97 positions)
TRITON_ATTENTION_MAX_LEN = 128

def attention_block_for(programs: int, device: torch.device) -> int:
    """Cache positions a program of cuda_ops.attend reads at once, for ``programs`` (row, head) programs.

    When they all fit on the GPU's SMs at once, each walks its cache in fewer, wider blocks; when they queue,
    narrower blocks (4 warps, not 8) let more of them run side by side. With PDL, H200, synthetic 8B (32 heads,
    cache 33-97 positions), int4 g128 tok/s at blocks of 32 / 64 / 128: batch 1 408.9 / 412.2 / 425.8, batch 16
    5225.7 / 5338.8 / 5188.4; bf16 lean 216.3 / 217.3 / 220.8 and 3271.1 / 3314.9 / 3213.1. Only batch 1 (32
    programs) and 16 (512) were measured."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0
    return 128 if programs <= sms else 64


# the step's Triton kernels launch with programmatic dependent launch (cuda_ops) where supported, unless
# this is "0". H200, synthetic 8B, graph-replayed, same process: int4 g128 363.2 -> 406.4 tok/s at batch 1,
# 4745.8 -> 5233.1 at batch 16; bf16 214.7 -> 217.0 and 3237.7 -> 3273.2 (benchmarks/gpu_speed_lean_options.py)
PDL_ENV = "QUANTLLM_LEAN_PDL"


def lean_pdl_wanted() -> bool:
    """$QUANTLLM_LEAN_PDL: "0" off; unset or anything else on."""
    return os.environ.get(PDL_ENV, "1").strip() != "0"


class CudaLeanDecoder:
    """Prefill then one token per step over a preallocated KV cache of ``max_len`` positions.

    Left-padded batches work: pass the prompt's 2-D ``attention_mask``; positions follow the
    mask (a padded row's first real token is position 0), as in ``StaticDecoder``.
    ``stack_float``: q/k/v and gate/up of a float model run as one matmul over a stacked copy of
    their weights (their memory twice); ``cuda_graph=False`` runs the step eagerly (profiling).
    """

    def __init__(self, model, batch_size: int, max_len: int, cuda_graph: bool = True, stack_float: bool = False,
                 attention: str | None = None, pdl: bool | None = None, attention_block: int | None = None):
        """``attention``: "triton" (cuda_ops.attend) or "sdpa" (PyTorch's SDPA over the whole cache, masked, as
        transformers' modules run it); None picks by ``max_len`` (``TRITON_ATTENTION_MAX_LEN``).
        ``pdl``: the Triton kernels launch with programmatic dependent launch where the GPU and Triton allow it
        (None: ``lean_pdl_wanted()``). ``attention_block``: cache positions one program of Triton's attention
        reads at once, a power of two (None: ``attention_block_for``)."""
        if max_len <= 0 or batch_size <= 0:
            raise ValueError(f"batch_size and max_len must be positive, got {batch_size}, {max_len}")
        why = cuda_lean_reason(model, max_len)
        if why:
            raise UnsupportedModelError(f"the CUDA lean decode step cannot run this model: {why}; "
                                        "use quant_core.decode.StaticDecoder (transformers' own modules)")
        self.model, self.batch_size, self.max_len = model, batch_size, max_len
        self.device = next(model.parameters()).device
        if fusion_wanted("cuda"):
            fuse_projections(model)
        self.m = m = gpu_model(model, stack_float)
        shape = (len(m.layers), batch_size, m.kv_heads, max_len, m.head_dim)
        self.k_cache = torch.zeros(shape, dtype=m.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=m.dtype, device=self.device)
        # the step's inputs: buffers a graph replay reads, moved in place inside it
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=self.device)
        self._ids = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self._slot = torch.zeros(1, dtype=torch.long, device=self.device)
        self._zero = torch.zeros(1, dtype=torch.long, device=self.device)
        if attention not in (None, "triton", "sdpa"):
            raise ValueError(f"attention must be 'triton' or 'sdpa', not {attention!r}")
        self.attention = attention or ("triton" if max_len <= TRITON_ATTENTION_MAX_LEN else "sdpa")
        self.graphed = cuda_graph
        self.pdl = (lean_pdl_wanted() if pdl is None else pdl) and pdl_launch_supported(self.device)
        self.attention_block = attention_block or attention_block_for(batch_size * m.heads, self.device)
        self._graph = None
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_prompt(input_ids.shape, self.batch_size, self.max_len)
        b, t = input_ids.shape
        mask = torch.ones(b, t, dtype=torch.long, device=self.device) if attention_mask is None \
            else attention_mask.to(self.device, torch.long)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        self.valid.zero_()
        self.valid[:, :t] = mask.bool()
        padded = not bool(mask.bool().all())
        attn_mask = None
        if padded:  # causal and padding; each position also sees itself, so no row is all-masked
            causal = torch.ones(t, t, dtype=torch.bool, device=self.device).tril()
            attn_mask = (causal & self.valid[:, None, None, :t]) | torch.eye(t, dtype=torch.bool, device=self.device)
        x, cos, sin = self._embed_rotary(input_ids.to(self.device), positions)
        pending = None
        for index, layer in enumerate(self.m.layers):
            pending = self._layer(index, layer, x, pending, cos, sin, t, self._zero,
                                  lambda q, k, v: self._prompt_attend(q, k, v, b, t, attn_mask))
        hidden = x.shape[-1]
        logits = self._logits(x.view(b, t, hidden)[:, -1].contiguous(), pending.view(b, t, hidden)[:, -1].contiguous())
        self._pos.copy_(positions[:, -1:] + 1)
        self._slot.fill_(t)
        self.length = t
        return logits

    @torch.inference_mode()
    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        if self.length >= self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions and is full; raise max_len")
        if self.length == 0:
            raise RuntimeError("call prefill() before step()")
        self._ids.copy_(next_ids.reshape(-1, 1))
        if self.graphed:
            if self._graph is None:
                self._graph = self._capture()
            self._graph.replay()
            logits = self._graph_logits.clone()  # the graph's output buffer is rewritten next step
        else:
            logits = self._step_body()
        self.length += 1
        return logits

    def _step_body(self) -> torch.Tensor:
        """One token per row on the step's buffers: the new position becomes visible, then counters move on."""
        self.valid.index_fill_(1, self._slot, True)
        x, cos, sin = self._embed_rotary(self._ids, self._pos)
        pending = None
        for index, layer in enumerate(self.m.layers):
            pending = self._layer(index, layer, x, pending, cos, sin, 1, self._slot, self._attend)
        logits = self._logits(x, pending)
        self._pos.add_(1)
        self._slot.add_(1)
        return logits

    def _embed_rotary(self, ids: torch.Tensor, positions: torch.Tensor):
        """Embeddings [B * T, H] and rotary tables [B * T, rd] (transformers' rotary module, once a step)."""
        x = self.m.embed(ids)
        cos, sin = self.m.rotary(x, positions)
        rows = ids.numel()
        return x.reshape(rows, -1).contiguous(), cos.reshape(rows, -1).contiguous(), sin.reshape(rows, -1).contiguous()

    def _layer(self, index: int, layer: GpuLayer, x, pending, cos, sin, t: int, slot, attention) -> torch.Tensor:
        """One decoder layer on the residual ``x`` (updated in place); returns its down projection, which
        the next norm adds into ``x``."""
        m, pdl = self.m, self.pdl
        k_cache, v_cache = self.k_cache[index], self.v_cache[index]
        h = ops.add_rms_norm(x, pending, layer.norm1.weight, layer.norm1.eps, pdl)
        qkv = layer.qkv(h).contiguous()
        q = ops.rope_cache(qkv, t, m.heads, m.kv_heads, m.head_dim, cos, sin, layer.q_norm, layer.k_norm,
                           k_cache, v_cache, slot, pdl)
        h = ops.add_rms_norm(x, layer.o(attention(q, k_cache, v_cache)), layer.norm2.weight, layer.norm2.eps, pdl)
        return layer.down(ops.swiglu(layer.gate_up(h).contiguous(), m.intermediate, pdl))

    def _attend(self, q, k_cache, v_cache) -> torch.Tensor:
        """One new token per row over the layer's cache: [B, heads * D]."""
        if self.attention == "triton":
            return ops.attend(q, k_cache, v_cache, self.valid, self._slot, self.m.scaling, self.pdl,
                              self.attention_block)
        # a row's query heads as the positions of its K/V head's query (transformers' pack_gqa): no K/V copy
        b, m = q.shape[0], self.m
        att = F.scaled_dot_product_attention(q.view(b, m.kv_heads, m.heads // m.kv_heads, m.head_dim), k_cache,
                                             v_cache, attn_mask=self.valid[:, None, None, :], scale=m.scaling)
        return att.reshape(b, m.heads * m.head_dim)

    def _prompt_attend(self, q, k_cache, v_cache, b: int, t: int, attn_mask) -> torch.Tensor:
        """A prompt at cache positions [0, t): PyTorch's SDPA (run once a request, not worth a kernel)."""
        m = self.m
        group = m.heads // m.kv_heads
        k = k_cache[:, :, :t].repeat_interleave(group, dim=1)
        v = v_cache[:, :, :t].repeat_interleave(group, dim=1)
        att = F.scaled_dot_product_attention(q.view(b, t, m.heads, m.head_dim).transpose(1, 2), k, v,
                                             attn_mask=attn_mask, is_causal=attn_mask is None and t > 1,
                                             scale=m.scaling)
        return att.transpose(1, 2).reshape(b * t, m.heads * m.head_dim)

    def _logits(self, x: torch.Tensor, pending: torch.Tensor) -> torch.Tensor:
        return self.m.head(ops.add_rms_norm(x, pending, self.m.norm.weight, self.m.norm.eps, self.pdl))

    def _capture(self) -> "torch.cuda.CUDAGraph":
        # Warm-up steps run the real step (kernels compile and tune) and write the same K/V the
        # replay writes; only the counters are put back.
        saved = [self._pos.clone(), self._slot.clone()]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step_body()
                self._pos.copy_(saved[0])
                self._slot.copy_(saved[1])
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._graph_logits = self._step_body()
        return graph

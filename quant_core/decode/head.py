"""Quantized output head and (tied) input embeddings: the mechanism behind issue 15 part 3.

A small model's float output matrix can outweigh all its quantized layers (SmolLM2-135M: 113 MB
of fp32 lm_head read per token against 55 MB of int4 linears). ``quantize_head`` replaces
``lm_head`` with a ``QuantLinear`` (RTN, any weight format) and, when the input embedding is
the same matrix (tied), the embedding with a ``QuantEmbedding`` that reads rows of the same
packed weight, so the float matrix is freed. The config field that will ask for this (and
saving / loading such a model) is wired in serialization, not here.
"""
from __future__ import annotations

import ctypes

import torch
from torch import nn

from ..formats import get_format
from ..kernels.cpu_simd import _CpuSimdKernel
from ..modules import QuantLinear
from ..packed import PackedWeight
from ..primitives import quantize_weight


class QuantEmbedding(nn.Module):
    """``nn.Embedding`` lookups from the rows of a ``QuantLinear``'s packed weight (shared, not copied)."""

    def __init__(self, table: QuantLinear, dtype: torch.dtype, padding_idx: int | None = None):
        super().__init__()
        self.table, self.dtype, self.padding_idx = table, dtype, padding_idx
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).to(torch.int64).cpu().contiguous()
        kernel = self.table._prepare(torch.empty(1, self.embedding_dim))
        if isinstance(kernel, _CpuSimdKernel) and kernel.w.perm is None:
            rows = torch.empty(flat.numel(), kernel.w.padded_in)
            kernel.lib.qgather(*kernel.w.layer_args(), _ptr(kernel.w.lut), _ptr(flat), flat.numel(), _ptr(rows))
            rows = rows[:, : self.embedding_dim]
        else:  # any other kernel: dequantize just these rows
            p = self.table.packed
            g_rows = None if p.g_idx is None else p.g_idx
            zeros = None if p.zeros is None else p.zeros[flat]
            rows = PackedWeight(p.fmt, p.in_features, flat.numel(), p.group_size, p.qweight[flat], p.scales[flat],
                                zeros, g_rows).dequantize(torch.float32)
        return rows.to(self.dtype).reshape(*ids.shape, self.embedding_dim).to(ids.device)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, packed {self.table.weight_dtype}"


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def quantize_head(model: nn.Module, weight_dtype: str = "int8", group_size: int = -1, sym: bool = True) -> nn.Module:
    """Quantize ``model.lm_head`` (RTN) in place, and a tied input embedding with it; returns ``model``."""
    head = model.get_output_embeddings()
    if isinstance(head, QuantLinear):
        return model
    if not isinstance(head, nn.Linear):
        raise TypeError(f"the output head is a {type(head).__name__}, not an nn.Linear")
    embed = model.get_input_embeddings()
    tied = isinstance(embed, nn.Embedding) and embed.weight is head.weight
    fmt = get_format(weight_dtype)
    codes, scales, zeros = quantize_weight(head.weight.detach(), fmt, group_size, sym, scale_dtype=torch.float16)
    packed = PackedWeight.from_codes(codes, scales, zeros, fmt, group_size)
    qhead = QuantLinear.from_packed(packed, head.bias)
    model.set_output_embeddings(qhead)
    if tied:
        model.set_input_embeddings(QuantEmbedding(qhead, embed.weight.dtype, embed.padding_idx))
        model.config.tie_word_embeddings = False  # nothing left to tie: transformers must not re-tie them
    return model

"""Quantized output head and (tied) input embedding: ``QuantConfig.head_weight_dtype``.

A small model's float output matrix can outweigh all its quantized layers (SmolLM2-135M: 113 MB
of fp32 lm_head read per token against 55 MB of int4 linears), and llama.cpp quantizes its output
matrix by default. ``quantize_head`` replaces ``lm_head`` with a ``QuantLinear`` (RTN) and, when
the input embedding is the same matrix (tied), the embedding with a ``QuantEmbedding`` that
dequantizes the rows it looks up from that same packed weight. Keeping a float copy for the
lookup instead would keep the 113 MB in memory and in the checkpoint for one row per token;
dequantizing a row costs nothing next to the head's matmul. Saved checkpoints name the layer the
embedding reads (``quantization_config.input_embedding``) and ``load_quantized`` rebuilds it.
"""
from __future__ import annotations

import ctypes

import torch
from torch import nn

from .formats import get_format
from .kernels.cpu_simd import _CpuSimdKernel
from .modules import QuantLinear
from .packed import PackedWeight
from .primitives import quantize_weight


class QuantEmbedding(nn.Module):
    """``nn.Embedding`` lookups from the rows of the model's (packed) output head, shared, not copied.

    Tied as transformers ties: it reads whatever ``model.get_output_embeddings()`` is at each call,
    so a head replaced later is followed. Neither the model nor the head is a submodule: the head is
    registered once, as the head, so the state dict, the layer manifest and ``.to()`` see it once."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, padding_idx: int | None = None):
        super().__init__()
        object.__setattr__(self, "model", model)
        self.dtype, self.padding_idx = dtype, padding_idx
        self.num_embeddings, self.embedding_dim = self.table.out_features, self.table.in_features

    @property
    def table(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        table = self.table
        if not isinstance(table, QuantLinear):  # a float head put back: read its rows
            return nn.functional.embedding(ids, table.weight.to(self.dtype), self.padding_idx)
        flat = ids.reshape(-1).to(torch.int64).cpu().contiguous()
        kernel = table._prepare(torch.empty(1, self.embedding_dim)) if table.qweight.is_cpu else None
        if table.packed.outliers is not None:  # rare (a head with sparse outliers): the reference rows
            rows = table.packed.dequantize(torch.float32)[flat.to(table.qweight.device)]
        elif isinstance(kernel, _CpuSimdKernel) and kernel.w.perm is None:
            rows = torch.empty(flat.numel(), kernel.w.padded_in)
            kernel.lib.qgather(*kernel.w.layer_args(), _ptr(kernel.w.lut), _ptr(flat), flat.numel(), _ptr(rows))
            rows = rows[:, : self.embedding_dim]
        else:  # any other kernel or device: dequantize just these rows
            p, index = table.packed, flat.to(table.qweight.device)
            zeros = None if p.zeros is None else p.zeros[index]
            rows = PackedWeight(p.fmt, p.in_features, flat.numel(), p.group_size, p.qweight[index], p.scales[index],
                                zeros, p.g_idx).dequantize(torch.float32)
        return rows.to(ids.device, self.dtype).reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rows of the model's output head"


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def head_group_size(weight_dtype: str, group_size: int) -> int:
    """8-bit heads: one scale per row (+0.16 % perplexity on SmolLM2); narrower formats need groups."""
    return -1 if get_format(weight_dtype).bits >= 8 else group_size


def quantize_head(model: nn.Module, weight_dtype: str = "int8", group_size: int = -1, sym: bool = True,
                  scale_dtype: torch.dtype = torch.float16, compute_dtype: str = "auto",
                  kernel: str | None = None) -> nn.Module:
    """Quantize ``model``'s output head (RTN) in place, and a tied input embedding with it; returns
    ``model``. A head that is already quantized, or is not an ``nn.Linear``, is left as it is."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or isinstance(head, QuantLinear):
        return model
    embed = model.get_input_embeddings()
    tied = isinstance(embed, nn.Embedding) and embed.weight is head.weight
    fmt = get_format(weight_dtype)
    weight = head.weight.detach().float()
    codes, scales, zeros = quantize_weight(weight, fmt, group_size, sym, scale_dtype=scale_dtype)
    packed = PackedWeight.from_codes(codes, scales, zeros, fmt, group_size)
    qhead = QuantLinear.from_packed(packed, head.bias, compute_dtype, kernel)
    model.set_output_embeddings(qhead)
    if tied:
        tie_embedding_to_head(model, embed.weight.dtype, embed.padding_idx)
    return model


def tie_embedding_to_head(model: nn.Module, dtype: torch.dtype, padding_idx: int | None = None) -> None:
    """Make the input embedding read the rows of the (quantized) output head."""
    model.set_input_embeddings(QuantEmbedding(model, dtype, padding_idx))
    model.config.tie_word_embeddings = False  # nothing left to tie: transformers must not re-tie them


def float_head(model: nn.Module, linears: list[tuple[str, nn.Linear]]) -> tuple[str, nn.Linear] | None:
    """(name, module) of the output head when it is a float ``nn.Linear`` that ``linears`` (the
    layers the main format quantizes) leaves out; None otherwise (no such head, or already covered)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or isinstance(head, QuantLinear) or any(m is head for _, m in linears):
        return None
    return next(name for name, module in model.named_modules() if module is head), head


def embedding_source(model: nn.Module) -> str | None:
    """Name of the quantized layer whose rows the input embedding reads (None: it has its own weights)."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(embed, QuantEmbedding) or not isinstance(embed.table, QuantLinear):
        return None
    return next(name for name, module in model.named_modules() if module is embed.table)

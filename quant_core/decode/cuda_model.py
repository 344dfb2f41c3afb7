"""What the CUDA lean step reads from a model, gathered once; and why a model cannot take it.

Same families as the CPU lean step (``lean_model.FAMILIES``), but everything stays in the model's
dtype and device, and a projection is whatever runs fastest on the GPU: one fused kernel call for
q/k/v and gate/up (``fused_projections``), the module itself for a single linear.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..modules import QuantLinear
from .lean_model import family_reason, layer_modules

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def cuda_lean_reason(model: nn.Module, max_len: int) -> str | None:
    """Why the CUDA lean step cannot run ``model`` with a ``max_len`` cache (None: it can)."""
    why = family_reason(model)
    if why:
        return why
    embed = model.model.embed_tokens
    if type(embed) is not nn.Embedding:  # e.g. output_head.QuantEmbedding, whose lookup goes through the host
        return f"the input embedding is a {type(embed).__name__}, not an nn.Embedding"
    param = next(model.parameters())
    if param.device.type != "cuda":
        return f"the CUDA lean step needs the model on a CUDA device, not {param.device}"
    dtype = embed.weight.dtype
    if dtype not in DTYPES:
        return f"activations of dtype {dtype} (the kernels take bf16, fp16, fp32)"
    window = getattr(model.config, "sliding_window", None)
    if window and max_len > window:
        return f"a {max_len}-position cache exceeds the sliding window ({window})"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install .[gpu])"
    return None


@dataclass
class GpuNorm:
    weight: torch.Tensor  # the model's dtype, as transformers multiplies it
    eps: float

    @classmethod
    def of(cls, module: nn.Module, dtype: torch.dtype) -> "GpuNorm":
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        return cls(module.weight.detach().to(dtype).contiguous(), float(eps))


class GpuProjection:
    """``linears`` reading one input, their outputs side by side: the fused group's one kernel call when
    they are one group; float linears stacked into one weight when ``stack_float`` (a copy of their
    weights: it costs their memory again); else each module, concatenated."""

    def __init__(self, linears: list[nn.Module], stack_float: bool = False):
        self.linears = linears
        self.group, self.weight, self.bias = None, None, None
        if len(linears) == 1:
            return
        group = getattr(linears[0], "fused", None)
        if all(isinstance(m, QuantLinear) for m in linears) and group is not None \
                and [id(m) for m in group.members] == [id(m) for m in linears]:
            self.group = group
            self.bias = _stacked_bias(linears)
        elif stack_float and all(type(m) is nn.Linear for m in linears):
            self.weight = torch.cat([m.weight.detach() for m in linears]).contiguous()
            self.bias = _stacked_bias(linears)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.linears) == 1:
            return self.linears[0](x)
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        if self.group is not None:
            y = self.group.forward(x)
            return (y if self.bias is None else y + self.bias.to(y.dtype)).to(x.dtype)
        return torch.cat([m(x) for m in self.linears], -1)


def _stacked_bias(linears: list[nn.Module]) -> torch.Tensor | None:
    if all(m.bias is None for m in linears):
        return None
    ref = next(m.bias for m in linears if m.bias is not None)
    return torch.cat([m.bias.detach() if m.bias is not None else ref.new_zeros(m.out_features) for m in linears])


@dataclass
class GpuLayer:
    norm1: GpuNorm
    qkv: GpuProjection
    q_norm: GpuNorm | None  # Qwen3: RMSNorm over each head's dims, before rotary
    k_norm: GpuNorm | None
    o: GpuProjection
    norm2: GpuNorm
    gate_up: GpuProjection
    down: GpuProjection


@dataclass
class GpuModel:
    embed: nn.Module
    rotary: nn.Module
    layers: list[GpuLayer]
    norm: GpuNorm
    head: GpuProjection
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float
    intermediate: int
    dtype: torch.dtype


def gpu_model(model: nn.Module, stack_float: bool = False) -> GpuModel:
    """The model's parts for the CUDA lean step (``cuda_lean_reason`` must hold)."""
    config, inner = model.config, model.model
    dtype = inner.embed_tokens.weight.dtype
    layers = [GpuLayer(GpuNorm.of(p.norm1, dtype), GpuProjection(p.qkv, stack_float),
                       None if p.q_norm is None else GpuNorm.of(p.q_norm, dtype), None if p.k_norm is None else GpuNorm.of(p.k_norm, dtype),
                       GpuProjection([p.o]), GpuNorm.of(p.norm2, dtype), GpuProjection(p.gate_up, stack_float),
                       GpuProjection([p.down])) for p in layer_modules(model)]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return GpuModel(inner.embed_tokens, inner.rotary_emb, layers, GpuNorm.of(inner.norm, dtype),
                    GpuProjection([model.lm_head]), heads, kv_heads, head_dim, head_dim ** -0.5,
                    config.intermediate_size, dtype)

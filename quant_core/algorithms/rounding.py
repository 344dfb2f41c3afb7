"""Round-to-nearest at a config's format, shared by the algorithms that choose scales or
ranges first (AWQ, TEQ): the weight they will compute with, and the codes they return."""
from __future__ import annotations

import torch

from ..config import QuantConfig
from ..primitives import fake_quantize_weight, quantize_weight
from .base import QuantResult


def fake_quantize(w: torch.Tensor, config: QuantConfig, shrink: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Quantize then dequantize ``[N, K]`` (``shrink``: scalar or ``[N, G]`` clip ratios)."""
    return fake_quantize_weight(w, config.format, config.group_size, config.sym, config.torch_scale_dtype,
                                shrink=shrink)


def quantize_clipped(w: torch.Tensor, config: QuantConfig, shrink: torch.Tensor | float = 1.0) -> QuantResult:
    """Codes of ``[N, K]`` with each group's range narrowed by ``shrink`` (no search of its own)."""
    return QuantResult(*quantize_weight(w, config.format, config.group_size, config.sym,
                                        scale_dtype=config.torch_scale_dtype, shrink=shrink))


def straight_through(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Value of ``target``, gradient of ``x`` (the straight-through estimator TEQ and SignRound train with)."""
    return x + (target - x).detach()

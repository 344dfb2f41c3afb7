"""The reference kernel: dequantize the whole weight, then one matmul. Always available."""
from __future__ import annotations

import torch

from .base import Kernel, LayerSpec, activation_dtype


def quantize_activations_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-token int8: returns int8 values and float32 scales ``[..., 1]``."""
    scale = x.float().abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
    q = torch.clamp(torch.round(x.float() / scale), -127, 127).to(torch.int8)
    return q, scale


class ReferenceKernel(Kernel):
    name = "reference"

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str]:
        return True, "dequantize then matmul; runs anything"

    def __init__(self, packed, spec):
        super().__init__(packed, spec)
        self.packed = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = activation_dtype(self.spec.compute_dtype)
        w = self.packed.dequantize(dtype)
        if self.spec.compute_dtype == "int8":
            q, s = quantize_activations_int8(x)
            x = q.to(dtype) * s
        return torch.nn.functional.linear(x.to(dtype), w)

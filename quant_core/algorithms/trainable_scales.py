"""TrainableScales: a QuantLinear's frozen codes with trainable group scales (scale tuning's layer).

The weight is rebuilt every forward as ``s * (q - z)`` (or ``s * codebook[q]``) from the unpacked codes,
so no float copy of the weight outlives a step; only ``log(s / s0)`` trains (fp32), which makes one
learning rate a relative step for every layer whatever its scales' size, and keeps each scale's sign
(signed full-range scales).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..modules import QuantLinear
from ..packed import PackedWeight
from ..primitives import dequantize_weight, stored_scale


class TrainableScales(nn.Module):
    def __init__(self, layer: QuantLinear):
        super().__init__()
        packed = layer.packed
        self.packed = packed  # what the algorithm left: codes, zero points, outliers and dtypes to keep
        self.register_buffer("codes", packed.codes())
        self.register_buffer("g_idx", packed.group_index())
        self.register_buffer("start", packed.scales.float())
        self.log_ratio = nn.Parameter(torch.zeros_like(self.start))
        self.bias = layer.bias
        self.outliers = None if packed.outliers is None else packed.outliers.dense(packed.out_features,
                                                                                   packed.in_features)

    def scales(self) -> torch.Tensor:
        return self.start * self.log_ratio.exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.packed
        w = dequantize_weight(self.codes, self.scales(), p.zeros, p.fmt, self.g_idx, zero_is_min=p.zero_mode == "min")
        if self.outliers is not None:
            w = w + self.outliers
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def stored(self) -> PackedWeight:
        """The algorithm's packed weight with the trained scales, rounded to their stored dtype (and
        re-encoded where the scales were double-quantized)."""
        dtype = self.packed.scales.dtype
        scales = stored_scale(self.scales().detach(), dtype).to(dtype).contiguous()
        packed = replace(self.packed, scales=scales, double_quant=None)
        block = self.packed.double_quant_block
        return packed if block is None else packed.with_double_quant(block)

    def restart_from(self, packed: PackedWeight) -> None:
        """Compute with ``packed``'s scales from now on (to measure exactly what will be stored)."""
        with torch.no_grad():
            self.start.copy_(packed.scales.float())
            self.log_ratio.zero_()

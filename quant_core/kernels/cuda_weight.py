"""The CUDA kernel's copy of one layer, made once from a ``PackedWeight`` (see ``cuda_layout``).

Act-order layers (``g_idx``) are made group-contiguous here: the weight's columns are permuted
once so that each group's rows are neighbours, and the kernel permutes the activations' columns
the same way on every call (``perm``), which costs one gather of ``M x K`` values instead of a
group lookup per weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import WeightFormat
from ..packed import PackedWeight
from .cuda_layout import act_order_permutation, codebook_tables, shuffle_codes, shuffle_groups
from ..primitives import group_width


def layout_kind(fmt: WeightFormat) -> str | None:
    """"int4", "cb4", "int8", or None where the CUDA kernel has no decoder for the format."""
    if fmt.is_codebook:
        return "cb4" if fmt.bits == 4 and fmt.levels is not None and len(fmt.levels) == 16 else None
    return {4: "int4", 8: "int8"}.get(fmt.bits)


def effective_group(group_size: int, in_features: int) -> int:
    """Rows per scale group as the kernel sees it: per-channel is one group of all K rows."""
    return min(group_width(in_features, group_size), in_features)


def group_reason(group_size: int, in_features: int) -> str | None:
    """Why the kernel cannot take this group size, or None if it can."""
    group = effective_group(group_size, in_features)
    if group == in_features:
        return None
    if group < 16 or group & (group - 1):
        return f"group_size {group_size} is not a power of two >= 16"
    return None


@dataclass
class CudaWeight:
    qweight: torch.Tensor  # uint8 [K/16, N/64, 128 * bits]
    scales: torch.Tensor  # [G, N] compute dtype, columns permuted per 64-block
    zeros: torch.Tensor | None  # uint8 [G, N] ("int") / compute dtype [G, N] ("min") / None
    perm: torch.Tensor | None  # int64 [K]: activation columns in the weight's order (act-order)
    lut: list[int]  # codebook byte tables (cb4), else zeros
    kind: str
    zero_mode: str
    group: int
    in_features: int
    out_features: int

    @property
    def group_shift(self) -> int:
        return self.group.bit_length() - 1 if self.group & (self.group - 1) == 0 else 0


def make_weight(packed: PackedWeight, dtype: torch.dtype) -> CudaWeight:
    kind = layout_kind(packed.fmt)
    if kind is None:
        raise ValueError(f"the CUDA kernel has no decoder for {packed.fmt.name}")
    k = packed.in_features
    group = effective_group(packed.group_size, k)
    codes = packed.codes()
    perm = None
    if packed.g_idx is not None:
        perm = act_order_permutation(packed.g_idx, group)
        codes = codes.index_select(1, perm)
    zeros = None
    if packed.zero_mode == "int":
        zeros = shuffle_groups(packed.zeros.to(torch.uint8))
    elif packed.zero_mode == "min":
        zeros = shuffle_groups(packed.zeros.to(dtype))
    lut = codebook_tables(packed.fmt.levels, dtype) if kind == "cb4" else [0] * 8
    return CudaWeight(qweight=shuffle_codes(codes, kind), scales=shuffle_groups(packed.scales.to(dtype)),
                      zeros=zeros, perm=perm, lut=lut, kind=kind, zero_mode=packed.zero_mode, group=group,
                      in_features=k, out_features=packed.out_features)

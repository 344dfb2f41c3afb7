"""The small interface every kernel backend implements."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..packed import PackedWeight


@dataclass(frozen=True)
class LayerSpec:
    """What a kernel needs to know to decide whether it can run a layer."""
    weight_dtype: str
    bits: int
    group_size: int
    in_features: int
    out_features: int
    sym: bool
    has_g_idx: bool
    zero_mode: str  # "none" | "int" | "min" (see PackedWeight.zero_mode)
    compute_dtype: str  # "fp32" | "bf16" | "fp16" | "int8" (already resolved from "auto")
    device_type: str  # "cpu" | "cuda" | ...

    @classmethod
    def of(cls, packed: PackedWeight, compute_dtype: str, device_type: str) -> "LayerSpec":
        return cls(packed.fmt.name, packed.fmt.bits, packed.group_size, packed.in_features,
                   packed.out_features, packed.sym, packed.g_idx is not None, packed.zero_mode,
                   compute_dtype, device_type)


class Kernel:
    """A way to compute ``x @ W.T`` for a packed weight.

    Subclasses set ``name`` and implement ``can_implement`` (a classmethod that
    never raises: it returns ``(False, reason)``), ``__init__`` (repack the weight
    into the kernel's own layout, once) and ``forward``. Bias is added by the module.
    """
    name: ClassVar[str] = "base"

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str]:
        raise NotImplementedError

    def __init__(self, packed: PackedWeight, spec: LayerSpec):
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def activation_dtype(compute_dtype: str) -> torch.dtype:
    """Float dtype activations are computed in (int8 compute keeps fp32 around its int parts)."""
    return TORCH_DTYPES.get(compute_dtype, torch.float32)


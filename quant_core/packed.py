"""PackedWeight: one quantized linear weight in the kernel-independent layout of ``formats``."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .formats import WeightFormat, get_format, pack_codes, unpack_codes
from .primitives import default_g_idx, dequantize_weight, n_groups


@dataclass
class PackedWeight:
    """Tensors of one quantized ``[out_features, in_features]`` weight.

    qweight: uint8 ``[N, ceil(K/8) * bits]``, codes packed as ``formats`` describes.
    scales:  ``[N, G]`` in the scale dtype.
    zeros:   uint8 ``[N, G]`` unsigned zero-point codes (``w = (u - z) * s``); or float
             ``[N, G]`` group minimums (``w = u * s + zeros``, GGUF Q4_1's form); or None
             (symmetric / codebook). ``zero_mode`` names which.
    g_idx:   int32 ``[K]`` group of each input column, or None for ``k // group_size``
             (set by act-order GPTQ; G = ceil(K / group_size) either way).
    """
    fmt: WeightFormat
    in_features: int
    out_features: int
    group_size: int  # -1: one group per output channel
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None = None
    g_idx: torch.Tensor | None = None

    @classmethod
    def from_codes(cls, codes, scales, zeros, fmt, group_size, g_idx=None, scale_dtype=torch.float16):
        n, k = codes.shape
        return cls(
            fmt=fmt, in_features=k, out_features=n, group_size=group_size,
            qweight=pack_codes(codes.to(torch.uint8), fmt.bits),
            scales=scales.to(scale_dtype).contiguous(),
            zeros=None if zeros is None else zeros.round().to(torch.uint8).contiguous(),
            g_idx=None if g_idx is None else g_idx.to(torch.int32).contiguous(),
        )

    @property
    def sym(self) -> bool:
        return self.zeros is None

    @property
    def zero_mode(self) -> str:
        """"none" (symmetric), "int" (zero-point codes) or "min" (float group minimums)."""
        if self.zeros is None:
            return "none"
        return "min" if self.zeros.is_floating_point() else "int"

    @property
    def n_groups(self) -> int:
        return n_groups(self.in_features, self.group_size)

    def codes(self) -> torch.Tensor:
        return unpack_codes(self.qweight, self.fmt.bits, self.in_features)

    def group_index(self) -> torch.Tensor:
        if self.g_idx is not None:
            return self.g_idx
        return default_g_idx(self.in_features, self.group_size, device=self.qweight.device)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """The reference dequantization: float ``[N, K]``."""
        w = dequantize_weight(self.codes(), self.scales, self.zeros, self.fmt, self.group_index(),
                              zero_is_min=self.zero_mode == "min")
        return w.to(dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"qweight": self.qweight, "scales": self.scales}
        if self.zeros is not None:
            out["zeros"] = self.zeros
        if self.g_idx is not None:
            out["g_idx"] = self.g_idx
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_shapes(self.fmt.name, self.in_features, self.out_features, self.group_size,
                               not self.sym, self.g_idx is not None)


def expected_shapes(fmt_name: str, in_features: int, out_features: int, group_size: int,
                    has_zeros: bool, has_g_idx: bool) -> dict[str, tuple[int, ...]]:
    """Shapes a checkpoint must hold for a layer; used to validate loads."""
    fmt = get_format(fmt_name)
    g = n_groups(in_features, group_size)
    shapes = {"qweight": (out_features, fmt.packed_row_bytes(in_features)), "scales": (out_features, g)}
    if has_zeros:
        shapes["zeros"] = (out_features, g)
    if has_g_idx:
        shapes["g_idx"] = (in_features,)
    return shapes

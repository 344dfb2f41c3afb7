"""PackedWeight: one quantized linear weight in the kernel-independent layout of ``formats``."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .double_quant import DoubleQuantScales, stored_shapes
from .formats import WeightFormat, get_format, pack_codes, unpack_codes
from .outliers import SparseResidual
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
    outliers: a sparse fp16 residual added to the dequantized codes (``quant_core.outliers``),
             or None.
    double_quant: the stored form of ``scales`` as 8-bit codes (``quant_core.double_quant``), or
             None. ``scales`` then holds their decoded values, which every kernel reads as usual;
             ``tensors()`` (what is saved) holds the codes instead.
    """
    fmt: WeightFormat
    in_features: int
    out_features: int
    group_size: int  # -1: one group per output channel
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None = None
    g_idx: torch.Tensor | None = None
    outliers: SparseResidual | None = None
    double_quant: DoubleQuantScales | None = None

    @classmethod
    def from_codes(cls, codes, scales, zeros, fmt, group_size, g_idx=None, scale_dtype=torch.float16,
                   outliers: SparseResidual | None = None):
        n, k = codes.shape
        return cls(
            fmt=fmt, in_features=k, out_features=n, group_size=group_size,
            qweight=pack_codes(codes.to(torch.uint8), fmt.bits),
            scales=scales.to(scale_dtype).contiguous(),
            zeros=None if zeros is None else zeros.round().to(torch.uint8).contiguous(),
            g_idx=None if g_idx is None else g_idx.to(torch.int32).contiguous(),
            outliers=outliers,
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
        """The reference dequantization: float ``[N, K]``, outliers included."""
        w = self.dequantize_codes()
        if self.outliers is not None:
            w = w + self.outliers.dense(self.out_features, self.in_features)
        return w.to(dtype)

    def dequantize_codes(self) -> torch.Tensor:
        """float32 ``[N, K]`` of the codes alone (what kernels compute with; outliers apart)."""
        return dequantize_weight(self.codes(), self.scales, self.zeros, self.fmt, self.group_index(),
                                 zero_is_min=self.zero_mode == "min")

    def without_outliers(self) -> "PackedWeight":
        """The same codes with no outliers: what a kernel repacks."""
        return replace(self, outliers=None)

    def with_double_quant(self, block: int) -> "PackedWeight":
        """The same codes with the scales stored as 8-bit codes and read back decoded (in the scale dtype)."""
        stored = DoubleQuantScales.encode(self.scales, block)
        return replace(self, scales=stored.decode(self.scales.dtype), double_quant=stored)

    @property
    def double_quant_block(self) -> int | None:
        return None if self.double_quant is None else self.double_quant.block

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores for this weight."""
        out = {"qweight": self.qweight}
        out.update({"scales": self.scales} if self.double_quant is None else self.double_quant.tensors())
        if self.zeros is not None:
            out["zeros"] = self.zeros
        if self.g_idx is not None:
            out["g_idx"] = self.g_idx
        if self.outliers is not None:
            out.update(self.outliers.tensors())
        return out

    def outlier_bytes(self) -> int:
        return 0 if self.outliers is None else self.outliers.nbytes()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def problems(self) -> list[str]:
        """What makes these tensors unfit for the layer they claim to be (empty when they fit):
        shapes, dtypes, and the values that index memory (group indices, zero-point codes)."""
        codes_part = self.without_outliers()
        expected = {**self.expected_shapes(), "scales": (self.out_features, self.n_groups)}
        out = [f"{name} has shape {tuple(t.shape)}, expected {shape}" for name, t, shape in
               ((n, t, expected.get(n)) for n, t in {**codes_part.tensors(), "scales": self.scales}.items())
               if tuple(t.shape) != shape]
        if self.double_quant is not None:
            out += self.double_quant.problems()
        if self.outliers is not None:
            out += self.outliers.problems(self.out_features, self.in_features)
        kinds = {"qweight": self.qweight.dtype == torch.uint8, "scales": self.scales.is_floating_point(),
                 "g_idx": self.g_idx is None or self.g_idx.dtype == torch.int32,
                 "zeros": self.zeros is None or self.zeros.dtype == torch.uint8 or self.zeros.is_floating_point()}
        out += [f"{name} has the wrong dtype" for name, ok in kinds.items() if not ok]
        if self.fmt.is_codebook and self.zeros is not None:
            out.append(f"{self.fmt.name} is a codebook format and has no zero points")
        if out or self.qweight.is_meta:
            return out
        if self.g_idx is not None and self.g_idx.numel() and (
                int(self.g_idx.min()) < 0 or int(self.g_idx.max()) >= self.n_groups):
            out.append(f"g_idx holds group indices outside 0..{self.n_groups - 1}")
        if self.zero_mode == "int" and self.zeros.numel() and int(self.zeros.max()) > self.fmt.max_code:
            out.append(f"zero points exceed the largest {self.fmt.bits}-bit code {self.fmt.max_code}")
        return out

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_shapes(self.fmt.name, self.in_features, self.out_features, self.group_size,
                               not self.sym, self.g_idx is not None, self.double_quant_block)


def expected_shapes(fmt_name: str, in_features: int, out_features: int, group_size: int,
                    has_zeros: bool, has_g_idx: bool, double_quant_block: int | None = None) -> dict[str, tuple[int, ...]]:
    """Shapes a checkpoint must hold for a layer; used to validate loads. With double quantization
    the scales are stored as codes (``double_quant.stored_shapes``), not as ``scales``."""
    fmt = get_format(fmt_name)
    g = n_groups(in_features, group_size)
    shapes = {"qweight": (out_features, fmt.packed_row_bytes(in_features))}
    shapes.update({"scales": (out_features, g)} if double_quant_block is None
                  else stored_shapes(out_features, g, double_quant_block))
    if has_zeros:
        shapes["zeros"] = (out_features, g)
    if has_g_idx:
        shapes["g_idx"] = (in_features,)
    return shapes

"""QuantLinear: a linear layer that holds only packed weights and runs through a chosen kernel."""
from __future__ import annotations

import logging

import torch
from torch import nn

from .formats import get_format
from . import cpu_features
from .double_quant import DoubleQuantScales
from .errors import CheckpointError
from .kernels.base import LayerSpec
from .kernels.registry import choose_kernel
from .outliers import SparseResidual, expected_outlier_shapes
from .packed import PackedWeight, expected_shapes
from .primitives import n_groups

log = logging.getLogger("quant_core")

_TENSOR_NAMES = ("qweight", "scales", "zeros", "g_idx", "scale_codes", "scale_absmax", "scale_offset")
_OUTLIER_NAMES = ("outlier_values", "outlier_indices", "outlier_row_ptr")


def check_same_device(weight: torch.Tensor, x: torch.Tensor) -> None:
    """As nn.Linear refuses; a GPU kernel handed host weights crashes instead (an illegal address)."""
    if weight.device != x.device:
        raise RuntimeError(f"QuantLinear's weights are on {weight.device} and its input on {x.device}: "
                           f"move the model (model.to({str(x.device)!r})) or the input")


class QuantLinear(nn.Module):
    """Drop-in for ``nn.Linear`` with a packed weight.

    The packed tensors are buffers (so ``state_dict``/``to()`` carry them); no float
    copy of the weight is kept. The kernel is chosen on first use for the input's
    device and kept until the module moves to another device. Sparse fp16 outliers
    (``outliers={"structure": ..., "count": ...}``) are added to every kernel's output here,
    once, so every kernel path executes them. With double quantization
    (``double_quant_block``) the scale codes are the saved buffers and ``scales`` is their
    decoded form, rebuilt whenever a state dict is loaded and never saved.
    """
    TENSOR_NAMES = _TENSOR_NAMES + _OUTLIER_NAMES

    def __init__(self, in_features: int, out_features: int, weight_dtype: str, group_size: int,
                 sym: bool, bias: bool, compute_dtype: str = "auto", has_g_idx: bool = False,
                 scale_dtype: torch.dtype = torch.float16, kernel: str | None = None, device=None,
                 zero_mode: str | None = None, outliers: dict | None = None, double_quant_block: int | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.fmt, self.group_size = get_format(weight_dtype), group_size  # parsed once, not per .packed
        self.compute_dtype, self.forced_kernel = compute_dtype, kernel
        self.double_quant_block = double_quant_block
        shapes = expected_shapes(self.weight_dtype, in_features, out_features, group_size,
                                 not sym, has_g_idx, double_quant_block)
        shapes["scales"] = (out_features, n_groups(in_features, group_size))  # decoded, where double-quantized
        zero_mode = zero_mode or ("none" if sym else "int")
        zero_dtype = scale_dtype if zero_mode == "min" else torch.uint8
        dtypes = {"qweight": torch.uint8, "scales": scale_dtype, "zeros": zero_dtype, "g_idx": torch.int32,
                  "scale_codes": torch.int8, "scale_absmax": torch.float32, "scale_offset": torch.float32}
        for name in _TENSOR_NAMES:
            value = torch.empty(shapes[name], dtype=dtypes[name], device=device) if name in shapes else None
            # decoded scales are derived from the codes: saving them too would undo the saving
            self.register_buffer(name, value, persistent=not (name == "scales" and double_quant_block))
        self.outlier_structure = None if outliers is None else outliers["structure"]
        spec = {} if outliers is None else expected_outlier_shapes(outliers["structure"], out_features,
                                                                  in_features, outliers["count"])
        for name in _OUTLIER_NAMES:
            value = torch.empty(spec[name][1], dtype=spec[name][0], device=device) if name in spec else None
            self.register_buffer(name, value)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        self._kernel = None
        self._kernel_key = None
        self._outliers = None  # the outliers as PreparedResidual on the input's device
        self.fused = None  # a FusedProjections this layer takes its columns from (fused_projections.py)

    @classmethod
    def from_packed(cls, packed: PackedWeight, bias: torch.Tensor | None, compute_dtype: str = "auto",
                    kernel: str | None = None) -> "QuantLinear":
        """A layer holding ``packed``'s tensors (not copies); CheckpointError if they do not fit
        the layer they describe, as the quantllm loader checks a saved layer."""
        problems = packed.problems()
        if bias is not None and tuple(bias.shape) != (packed.out_features,):
            problems.append(f"bias has shape {tuple(bias.shape)}, expected ({packed.out_features},)")
        if problems:
            raise CheckpointError(f"packed {packed.fmt.name} tensors do not fit a {packed.in_features} -> "
                                  f"{packed.out_features} layer with group size {packed.group_size}: "
                                  + "; ".join(problems))
        outliers = None if packed.outliers is None else {"structure": packed.outliers.structure,
                                                          "count": packed.outliers.count}
        mod = cls(packed.in_features, packed.out_features, packed.fmt.name, packed.group_size,
                  packed.sym, bias is not None, compute_dtype, packed.g_idx is not None,
                  packed.scales.dtype, kernel, device="meta", zero_mode=packed.zero_mode, outliers=outliers,
                  double_quant_block=packed.double_quant_block)
        for name, tensor in {**packed.tensors(), "scales": packed.scales}.items():
            setattr(mod, name, tensor)
        if bias is not None:
            mod.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return mod

    @property
    def weight_dtype(self) -> str:
        return self.fmt.name

    @property
    def outliers(self) -> SparseResidual | None:
        if self.outlier_structure is None:
            return None
        return SparseResidual(self.outlier_structure, self.outlier_values, self.outlier_indices, self.outlier_row_ptr)

    @property
    def packed(self) -> PackedWeight:
        return PackedWeight(self.fmt, self.in_features, self.out_features,
                            self.group_size, self.qweight, self.scales, self.zeros, self.g_idx, self.outliers,
                            self._double_quant())

    def _double_quant(self) -> DoubleQuantScales | None:
        if self.double_quant_block is None:
            return None
        return DoubleQuantScales(self.scale_codes, self.scale_absmax, self.scale_offset, self.double_quant_block)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.double_quant_block is not None and f"{prefix}scale_codes" in state_dict:
            # the one place loaded scale codes become the scales every kernel reads (in the layer's scale dtype)
            self.scales = self._double_quant().decode(self.scales.dtype)
            self._kernel = None
            if self.fused is not None:
                self.fused.reset()

    def resolved_compute_dtype(self, device_type: str, x_dtype: torch.dtype) -> str:
        if self.compute_dtype != "auto":
            return self.compute_dtype
        if device_type == "cpu":
            # a bf16 model computes in bf16 only where the CPU has bf16 units; emulated bf16
            # (AVX2-only CPUs) is slower than fp32
            return "bf16" if x_dtype == torch.bfloat16 and cpu_features.native_bf16() else "fp32"
        return {torch.bfloat16: "bf16", torch.float32: "fp32"}.get(x_dtype, "fp16")

    def layer_spec(self, device_type: str, x_dtype: torch.dtype = torch.float32) -> LayerSpec:
        return LayerSpec.of(self.packed, self.resolved_compute_dtype(device_type, x_dtype), device_type)

    @property
    def kernel(self):
        return self.fused.kernel if self.fused is not None else self._kernel

    def _prepare(self, x: torch.Tensor):
        key = (x.device, x.dtype)
        if self._kernel is None or self._kernel_key != key:
            check_same_device(self.qweight, x)
            spec = self.layer_spec(x.device.type, x.dtype)
            kernel_cls = choose_kernel(spec, self.forced_kernel)
            self._kernel, self._kernel_key = kernel_cls(self.packed.without_outliers(), spec), key
            if self.outlier_structure is not None:
                self._outliers = self.outliers.prepare(self.out_features, self.in_features)
        return self._kernel

    def _apply(self, fn, *args, **kwargs):
        self._kernel = self._outliers = None  # moved or cast: the repacked copies are stale
        if self.fused is not None:
            self.fused.reset()
        stored = dict(self._buffers)
        out = super()._apply(fn, *args, **kwargs)
        for name, old in stored.items():  # model.to(bf16) must not re-round the stored scales:
            new = self._buffers.get(name)  # packed tensors follow the device, never the dtype
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fused.output(self, x) if self.fused is not None else self._prepare(x).forward(x)
        if self.outlier_structure is not None:  # the sparse residual, for every kernel alike
            residual = self._outliers.matmul(x.reshape(-1, self.in_features))
            y = y + residual.reshape(y.shape).to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        kname = self.kernel.name if self.kernel is not None else "unchosen"
        if self.fused is not None:
            kname += f" (fused x{len(self.fused.members)})"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weight_dtype={self.weight_dtype}, group_size={self.group_size}, "
                f"sym={self.zeros is None}, kernel={kname}"
                + (f", outliers={self.outlier_structure} x{self.outlier_indices.numel()}"
                   if self.outlier_structure else ""))

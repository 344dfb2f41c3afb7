"""One matmul of the lean decode step: ``out = x @ W^T (+ bias)`` over one or several linears.

Several linears that read the same input (q/k/v, gate/up) run as one call when they are all
quantized for the C++ CPU kernels with matching layouts: the kernel reads their rows as one
weight (``CpuKernel.stacked``: the modules' own bytes, no copy). Anything else (float
``nn.Linear``, other kernels) runs module by module into column slices of ``out``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..kernels.cpu_repack import fusable
from ..kernels.cpu_simd import _CpuSimdKernel
from ..modules import QuantLinear


def _cpu_kernel(module: nn.Module, in_features: int):
    """The module's C++ CPU kernel for fp32 activations, or None (then the module's own forward
    runs: also for sparse outliers, which only ``QuantLinear.forward`` adds)."""
    if not isinstance(module, QuantLinear) or module.qweight.device.type != "cpu" or module.outliers is not None:
        return None
    kernel = module._prepare(torch.empty(1, in_features))
    return kernel if isinstance(kernel, _CpuSimdKernel) else None


class Projection:
    """``linears`` (same input, outputs side by side) as one callable."""

    def __init__(self, linears: list[nn.Module]):
        self.linears = linears
        self.in_features = linears[0].in_features
        self.widths = [m.out_features for m in linears]
        self.out_features = sum(self.widths)
        kernels = [_cpu_kernel(m, self.in_features) for m in linears]
        self.kernel, self.bias = None, None
        if all(k is not None for k in kernels) and fusable([k.w for k in kernels]) is None:
            self.kernel = kernels[0] if len(kernels) == 1 else type(kernels[0]).stacked(kernels)
            if any(m.bias is not None for m in linears):
                bias = torch.cat([m.bias.detach().float() if m.bias is not None else torch.zeros(m.out_features)
                                  for m in linears])
                self.bias = self.kernel.padded_bias(bias)
            k = self.kernel
            self.direct = k.w.perm is None and k.w.padded_in == k.w.in_features  # activations need no copy

    @property
    def fused(self) -> bool:
        return self.kernel is not None

    def __call__(self, x: torch.Tensor, out: torch.Tensor, accumulate: bool = False,
                 prompt: list[int] | None = None) -> torch.Tensor:
        """``x`` [M, K] float32 contiguous; ``out`` [M, N] float32 (rows may be strided). ``prompt``: the
        rows are those of prompts left-padded to equal widths, of these real lengths (the kernel's prompt
        path, ``_CpuSimdKernel.prompt``: each prompt on the kernel it takes alone)."""
        if self.kernel is not None:  # straight into out: the small-batch kernel or the blocked GEMM
            xa = x if self.direct else self.kernel.activations(x)
            if prompt is not None:
                return self.kernel.prompt(xa, out, self.bias, accumulate, prompt)
            run = self.kernel.gemv if x.shape[0] < self.kernel.gemm_rows or self.kernel.int8 else self.kernel.gemm
            return run(xa, out, self.bias, accumulate)
        y = self._unfused(x)
        return out.add_(y) if accumulate else out.copy_(y)

    def _unfused(self, x: torch.Tensor) -> torch.Tensor:
        ys = [m(x.to(_weight_dtype(m))).float() for m in self.linears]
        return ys[0] if len(ys) == 1 else torch.cat(ys, -1)


def _weight_dtype(module: nn.Module) -> torch.dtype:
    weight = getattr(module, "weight", None)
    return weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else torch.float32

"""Kernels: each turns (activations, PackedWeight) into outputs; chosen per layer by ``registry``."""
from .base import Kernel, LayerSpec
from .registry import choose_kernel, explain, NoKernelError

__all__ = ["Kernel", "LayerSpec", "choose_kernel", "explain", "NoKernelError"]

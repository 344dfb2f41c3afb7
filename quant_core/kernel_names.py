"""The kernels quantllm has, by name, as data: ``name -> "module:Class"``.

It sits in the lowest layer so that ``QuantConfig`` can refuse an unknown ``kernel`` when it is
built; ``kernels.registry`` imports a kernel's module only when it is considered.
"""
from __future__ import annotations

KERNELS: dict[str, str] = {
    "reference": "quant_core.kernels.reference:ReferenceKernel",
    "cpu_avx512": "quant_core.kernels.cpu_simd:CpuAvx512Kernel",
    "cpu_avx2": "quant_core.kernels.cpu_simd:CpuAvx2Kernel",
    "ipex": "quant_core.kernels.ipex:IpexKernel",
    "triton": "quant_core.kernels.triton_kernel:TritonKernel",
    "cuda": "quant_core.kernels.cuda_kernel:CudaKernel",
}

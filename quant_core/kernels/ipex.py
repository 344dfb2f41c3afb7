"""Intel Extension for PyTorch backend (optional extra ``quantllm[ipex]``).

Chosen only where IPEX can help: it imports against the running torch (same
major.minor; IPEX refuses other versions, sometimes with AttributeError rather than
ImportError) and the CPU is AVX-512 or better (on AVX2-only CPUs IPEX's weight-only
linear falls back to unpacking the whole weight per call, far slower than our kernels).
Layers map through ``WeightOnlyQuantizedLinear.from_float_and_qweight`` in IPEX's
"plain" format, which matches ours for int4 (code 2j in the low nibble of byte j).
"""
from __future__ import annotations

import functools
import importlib

import torch
from torch import nn

from .. import cpu_features
from .base import Kernel, LayerSpec
from ..primitives import per_channel

# Our weight dtype -> IPEX's WoqWeightDtype member name.
WEIGHT_DTYPES = {"int8": "INT8", "int4_fullrange": "INT4", "int4_clip": "INT4", "nf4": "NF4"}
# Our compute dtype -> IPEX's WoqLowpMode member name.
LOWP_MODES = {"fp32": "NONE", "fp16": "FP16", "bf16": "BF16", "int8": "INT8"}


@functools.lru_cache(maxsize=1)
def import_ipex():
    """(module, "") if IPEX imports and matches torch's major.minor, else (None, reason)."""
    try:
        ipex = importlib.import_module("intel_extension_for_pytorch")
    except ImportError as exc:
        return None, f"not installed (pip install 'quantllm[ipex]'; {exc})"
    except Exception as exc:  # IPEX built for another torch fails with AttributeError and friends
        return None, f"fails to import against torch {torch.__version__}: {type(exc).__name__}: {exc}"
    return ipex, version_mismatch(getattr(ipex, "__version__", "unknown"), torch.__version__)


def version_mismatch(ipex_version: str, torch_version: str) -> str:
    """"" when the versions pair up, else why not (IPEX x.y.* supports torch x.y.* only)."""
    def major_minor(v):
        return tuple(v.split("+")[0].split(".")[:2])
    if major_minor(ipex_version) != major_minor(torch_version):
        return f"IPEX {ipex_version} needs torch {'.'.join(major_minor(ipex_version))}.x, running {torch_version}"
    return ""


class IpexKernel(Kernel):
    name = "ipex"

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> tuple[bool, str]:
        if spec.device_type != "cpu":
            return False, f"CPU backend, not {spec.device_type}"
        level = cpu_features.isa_level()
        if not cpu_features.at_least("avx512", level):
            return False, f"IPEX's fast weight-only kernels need AVX-512; this CPU's level is {level}"
        if spec.weight_dtype not in WEIGHT_DTYPES:
            return False, f"IPEX has no {spec.weight_dtype} weights (has {', '.join(WEIGHT_DTYPES)})"
        if spec.compute_dtype not in LOWP_MODES:
            return False, f"no IPEX lowp mode for compute_dtype {spec.compute_dtype}"
        if spec.zero_mode == "min":
            return False, "float group minimums (GGUF Q4_1 style) have no IPEX form"
        if not per_channel(spec.group_size) and spec.in_features % spec.group_size:
            return False, "IPEX needs in_features to be a multiple of group_size"
        if spec.in_features % 8:
            return False, "IPEX's packed int4 rows need in_features to be a multiple of 8"
        ipex, why = import_ipex()
        if ipex is None or why:
            return False, why
        return True, f"IPEX {ipex.__version__} WeightOnlyQuantizedLinear ({spec.weight_dtype}, lowp {LOWP_MODES[spec.compute_dtype]})"

    def __init__(self, packed, spec: LayerSpec):
        super().__init__(packed, spec)
        ipex, why = import_ipex()
        if ipex is None or why:
            raise RuntimeError(f"IPEX kernel unavailable: {why}")
        from intel_extension_for_pytorch.nn.modules import WeightOnlyQuantizedLinear, WoqWeightFormat
        from intel_extension_for_pytorch.quantization import (WoqLowpMode, WoqWeightDtype,
                                                              get_weight_only_quant_qconfig_mapping)

        wdtype = getattr(WoqWeightDtype, WEIGHT_DTYPES[spec.weight_dtype])
        lowp = getattr(WoqLowpMode, LOWP_MODES[spec.compute_dtype])
        qweight, zeros = plain_tensors(packed)
        float_mod = nn.Linear(packed.in_features, packed.out_features, bias=False)
        float_mod.qconfig = get_weight_only_quant_qconfig_mapping(
            weight_dtype=wdtype, lowp_mode=lowp, group_size=packed.group_size).global_qconfig
        self.module = WeightOnlyQuantizedLinear.from_float_and_qweight(
            float_mod, qweight, wdtype, packed.scales.float(), zeros, None,
            group_size=packed.group_size, g_idx=packed.g_idx, weight_format=WoqWeightFormat.PLAIN_FORMAT)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.compute_dtype, torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype))


def plain_tensors(packed) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Our packed weight -> IPEX plain ``qweight`` and integer zero points ``[N, G]`` (or None).

    int8 in IPEX is signed, so codes and zero points shift by 128; int4's packed bytes are
    already IPEX's; NF4 has no zero points.
    """
    fmt = packed.fmt
    n, g = packed.scales.shape
    if fmt.bits == 8:
        qweight = (packed.codes().to(torch.int16) - 128).to(torch.int8)
        zeros = torch.zeros(n, g, dtype=torch.int8) if packed.zeros is None \
            else (packed.zeros.to(torch.int16) - 128).to(torch.int8)
        return qweight, zeros
    qweight = packed.qweight[:, : packed.in_features // 2].contiguous()
    if fmt.is_codebook:
        return qweight, None
    zeros = torch.full((n, g), fmt.sym_zero, dtype=torch.uint8) if packed.zeros is None else packed.zeros
    return qweight, zeros.to(torch.int8)

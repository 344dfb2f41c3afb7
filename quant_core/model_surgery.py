"""Model surgery: which linears a config quantizes, swapping one for a QuantLinear, and
recording the config on the model. Shared by the algorithms, the entry point and importers."""
from __future__ import annotations

from torch import nn

from .config import QuantConfig
from .modules import QuantLinear
from .packed import PackedWeight


def quantizable_linears(model: nn.Module, config: QuantConfig) -> list[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` not excluded by ``modules_to_not_convert``, in module order.

    Layers that transformers keeps in fp32 (``_keep_in_fp32_modules``, e.g. T5's ``wo``,
    whose forward reads ``.weight``) stay float too.
    """
    keep_float = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    return [(name, mod) for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and not config.skips(name)
            and not any(k in name.split(".") for k in keep_float)]


def replace_linear(model: nn.Module, name: str, packed: PackedWeight, bias, config: QuantConfig) -> QuantLinear:
    """Put a ``QuantLinear`` holding ``packed`` (and ``bias``) where the module ``name`` was."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    qlinear = QuantLinear.from_packed(packed, bias, config.compute_dtype, config.kernel)
    setattr(parent, child, qlinear)
    return qlinear


def mark_quantized(model: nn.Module, config: QuantConfig) -> None:
    """Record ``config`` as ``model.config.quantization_config`` (``quant_method: quantllm``)."""
    if hasattr(model, "config"):
        model.config.quantization_config = {"quant_method": "quantllm", **config.to_dict()}
        model.hf_quantizer = None

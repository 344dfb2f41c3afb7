"""One entry point: ``quantize(model, config)`` looks up the algorithm's handler by name."""
from __future__ import annotations

import importlib

import torch
from torch import nn

from .config import QuantConfig
from .model_surgery import mark_quantized, quantizable_linears
from .model_surgery import replace_linear  # noqa: F401  (importers still take it from here)
from .modules import QuantLinear

# algorithm name -> "module:function(model, config, **kwargs) -> model"
HANDLERS = {
    "rtn": "quant_core.algorithms.rtn:quantize_model",
    "gptq": "quant_core.algorithms.gptq:quantize_model",
    "awq": "quant_core.algorithms.awq:quantize_model",
    "teq": "quant_core.algorithms.teq:quantize_model",
}


def quantize(model: nn.Module, config: QuantConfig | dict | None = None, **kwargs) -> nn.Module:
    """Quantize ``model``'s linear weights in place and return it.

    The config is recorded on ``model.config.quantization_config`` (as a dict with
    ``quant_method: quantllm``) so that ``save_quantized`` can write it.
    """
    config = QuantConfig.coerce(config)
    config = QuantConfig() if config is None else config
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("model is already quantized; load the float model to quantize it again")
    if not quantizable_linears(model, config):
        raise ValueError("model has no nn.Linear layers to quantize (all excluded by modules_to_not_convert?)")
    module, fn = HANDLERS[config.algorithm].split(":") if config.algorithm in HANDLERS else (None, None)
    if module is None:
        raise NotImplementedError(f"algorithm {config.algorithm!r} is not available in this build; "
                                  f"available: {', '.join(HANDLERS)}")
    with torch.no_grad():
        model = getattr(importlib.import_module(module), fn)(model, config, **kwargs)
    mark_quantized(model, config)
    return model


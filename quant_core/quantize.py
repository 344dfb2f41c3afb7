"""One entry point: ``quantize(model, config)`` runs the handler registered for ``config.algorithm``.

Algorithms register themselves when their module is imported (``@register_algorithm("rtn")``,
or ``algorithms.driver.calibrated_algorithm`` for a per-block step); ``import quant_core``
imports ``quant_core.algorithms``, which imports every algorithm. A handler is called as
``handler(model, config, calibration=..., tokenizer=..., progress=..., device=...)``, quantizes
the model's linears in place (``model_surgery``) and returns the model.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .awq_search_auto import resolve_awq_search
from .blocks import default_device
from .calibration import calibration_dtype_on
from .config import ALGORITHMS, QuantConfig
from .errors import ConfigError
from .model_surgery import mark_quantized, quantizable_linears
from .modules import QuantLinear
from .output_head import float_head, head_group_size, quantize_head
from .primitives import per_channel
from .scale_tuning_auto import resolve_scale_tuning

Handler = Callable[..., nn.Module]
HANDLERS: dict[str, Handler] = {}  # algorithm name -> handler
CALIBRATED: set[str] = set()  # algorithms whose handler runs calibration forwards (config.calibration_dtype)


def register_algorithm(name: str, calibrated: bool = False) -> Callable[[Handler], Handler]:
    """Decorator: ``handler`` quantizes models whose config names algorithm ``name``; ``calibrated``: it
    runs calibration forwards, so the saved config records the precision they ran in."""
    if name not in ALGORITHMS:
        raise ConfigError(f"algorithm {name!r} has no entry in quant_core.config.ALGORITHM_SETTINGS; "
                          f"add it there with its settings first")

    def register(handler: Handler) -> Handler:
        HANDLERS[name] = handler
        if calibrated:
            CALIBRATED.add(name)
        return handler
    return register


def quantize(model: nn.Module, config: QuantConfig | dict | None = None, *, calibration=None, tokenizer=None,
             progress: bool = True, device=None) -> nn.Module:
    """Quantize ``model``'s linear weights in place and return it.

    ``calibration`` / ``tokenizer``: data for calibrated algorithms (see
    ``quant_core.calibration.resolve_calibration``); ``device``: where they calibrate
    (default: CUDA when available). The config is recorded on
    ``model.config.quantization_config`` (as a dict with ``quant_method: quantllm``) so that
    ``save_quantized`` can write it.
    """
    config = QuantConfig.coerce(config)
    config = QuantConfig() if config is None else config
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ConfigError("model is already quantized; load the float model to quantize it again")
    linears = quantizable_linears(model, config)
    if not linears:
        raise ConfigError("model has no nn.Linear layers to quantize (all excluded by modules_to_not_convert?)")
    check_groups_fit(linears, config.group_size)
    head = float_head(model, linears) if config.head_weight_dtype else None
    if head is not None:
        check_groups_fit([head], head_group_size(config.head_weight_dtype, config.group_size))
    handler = HANDLERS.get(config.algorithm)
    if handler is None:
        raise ConfigError(f"algorithm {config.algorithm!r} is not registered in this build; "
                          f"registered: {', '.join(HANDLERS)}")
    # the fields left to the run (config.DECIDED_AT_RUN), decided for where calibration runs and recorded
    where = device or default_device()
    config = resolve_scale_tuning(model, config, where, config.algorithm in CALIBRATED)
    config = resolve_awq_search(config, where)
    calibrates = config.algorithm in CALIBRATED or config.scale_tuning_steps > 0
    if calibrates and config.calibration_dtype == "auto":
        config = config.model_copy(update={"calibration_dtype": calibration_dtype_on(config, where)})
    with torch.no_grad():
        model = handler(model, config, calibration=calibration, tokenizer=tokenizer, progress=progress,
                        device=device)
        if head is not None:
            quantize_head(model, config.head_weight_dtype, head_group_size(config.head_weight_dtype, config.group_size),
                          scale_dtype=config.torch_scale_dtype, compute_dtype=config.compute_dtype, kernel=config.kernel)
    mark_quantized(model, config)
    return model


def check_groups_fit(linears: list[tuple[str, nn.Linear]], group_size: int) -> None:
    """Refuse, before any layer is quantized, a group wider than a layer: each row would be padded
    to ``group_size`` columns (``--group-size 1000000000`` asked for terabytes after 18 s of work)."""
    if per_channel(group_size):
        return
    narrow = [(name, linear.in_features) for name, linear in linears if linear.in_features < group_size]
    if narrow:
        name, width = min(narrow, key=lambda item: item[1])
        others = f" (and {len(narrow) - 1} more layers)" if len(narrow) > 1 else ""
        fitting = f"a group size of at most {width - width % 8}, " if width >= 8 else ""
        raise ConfigError(f"group_size={group_size} is wider than layer {name}'s {width} input columns{others}: "
                          f"use {fitting}-1 for one group per row, or keep such layers float with "
                          f"modules_to_not_convert")

"""Round-to-nearest: each group's scale from its range (optionally MSE-clipped), no data needed."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..blocks import default_device
from ..calibration import resolve_calibration
from ..config import QuantConfig
from ..model_surgery import quantizable_linears, replace_linear
from ..primitives import quantize_weight
from ..quantize import register_algorithm
from .base import QuantResult
from .scale_tuning import start_scale_tuning


def rtn(weight: torch.Tensor, config: QuantConfig) -> QuantResult:
    codes, scales, zeros = quantize_weight(
        weight.detach().float(), config.format, config.group_size, config.sym,
        mse_clip=config.mse_clip, scale_dtype=config.torch_scale_dtype)
    return QuantResult(codes, scales, zeros)


@register_algorithm("rtn")
def quantize_model(model: torch.nn.Module, config: QuantConfig, *, progress: bool = True, calibration=None,
                   tokenizer=None, device=None) -> torch.nn.Module:
    """Every quantizable linear, where its weight is; RTN needs no calibration data (but its scale
    tuning, ``config.scale_tuning_steps``, does)."""
    tuning = None
    if config.scale_tuning_steps:
        tuning = start_scale_tuning(model, config, resolve_calibration(config, calibration, tokenizer),
                                    device or default_device())
    targets = quantizable_linears(model, config)
    for name, linear in tqdm(targets, desc="RTN", disable=not progress, unit="layer"):
        replace_linear(model, name, rtn(linear.weight, config).pack(config), linear.bias, config)
    if tuning is not None:
        tuning.run(model, progress)
    return model

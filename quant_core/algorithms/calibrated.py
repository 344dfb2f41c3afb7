"""Model-level glue shared by calibrated algorithms: calibration data in, QuantLinears out.

``calibrate_blockwise(model, config, block_fn, ...)`` resolves the calibration batches
(failing before any expensive work), runs ``quant_core.blocks.run_blockwise`` and calls
``block_fn(block, inputs, groups, config, install)`` per block, where ``groups`` are the
block's linear groups (names relative to the block, in execution order, minus those that
``modules_to_not_convert`` excludes) and ``install(names, {name: QuantResult})`` records
results. Installed weights are written back *fake-quantized* (dequantized floats) so the
rest of the block and the next blocks see quantized outputs at float speed; each block's
linears become ``QuantLinear`` once the driver has moved on. Linears outside the decoder
blocks (e.g. an ``lm_head`` that is not excluded) get RTN, with a log line saying so.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from ..blocks import architecture_of, run_blockwise
from ..calibration import CalibrationError, batches_from_config, check_batches
from ..config import QuantConfig
from ..model_surgery import quantizable_linears, replace_linear

log = logging.getLogger("quant_core")


def resolve_calibration(config: QuantConfig, calibration=None, tokenizer=None) -> list[torch.Tensor]:
    """Input-id batches: tensors given directly (``[n, T]`` or a list of ``[b, T]``), or
    ``calibration`` text (``None``: ``config.calibration_dataset``, else the shipped default
    sample) tokenized with ``tokenizer`` into ``config.n_samples`` windows of ``config.seqlen``."""
    if isinstance(calibration, torch.Tensor):
        calibration = list(calibration.reshape(-1, calibration.shape[-1]).split(config.calibration_batch_size))
    if isinstance(calibration, (list, tuple)) and calibration and isinstance(calibration[0], torch.Tensor):
        check_batches(calibration)
        return list(calibration)
    if tokenizer is None:
        what = "the shipped default text" if calibration is None and config.calibration_dataset is None \
            else repr(calibration or config.calibration_dataset)
        raise CalibrationError(f"{config.algorithm} needs calibration data: pass tokenizer=... to tokenize "
                               f"{what}, or calibration=[LongTensor [batch, seqlen], ...]")
    return batches_from_config(tokenizer, config, source=calibration)


def block_groups(block: nn.Module, arch, prefix: str, config: QuantConfig) -> list[list[str]]:
    groups = []
    for group in arch.groups:
        names = [n for n in group.names if not config.skips(f"{prefix}.{n}")]
        if names:
            groups.append(names)
    known = set(arch.linear_names())
    for name, mod in block.named_modules():  # linears the table does not know: quantized alone, last
        if isinstance(mod, nn.Linear) and name not in known and not config.skips(f"{prefix}.{name}"):
            log.info("%s.%s is not in the architecture table; quantizing it on its own", prefix, name)
            groups.append([name])
    return groups


def calibrate_blockwise(model: nn.Module, config: QuantConfig, block_fn: Callable, calibration=None,
                        tokenizer=None, progress: bool = True, device=None, desc: str = "calibrate") -> nn.Module:
    from .rtn import rtn

    arch = architecture_of(model)
    batches = resolve_calibration(config, calibration, tokenizer)
    pending: list[tuple[nn.Module, str, object]] = []

    def flush():
        for block, name, packed in pending:
            linear = block.get_submodule(name)
            home = linear.weight.device
            q = replace_linear(block, name, packed, linear.bias, config)
            q.to(home)
        pending.clear()

    def per_block(block, inputs, index):
        flush()
        prefix = f"{arch.layers}.{index}"

        def install(names, results):
            for name in names:
                linear = block.get_submodule(name)
                packed = results[name].pack(config)
                with torch.no_grad():
                    linear.weight.copy_(packed.dequantize(linear.weight.dtype))
                pending.append((block, name, packed))

        block_fn(block, inputs, block_groups(block, arch, prefix, config), config, install)

    run_blockwise(model, batches, per_block, device=device, progress=progress, desc=desc)
    flush()
    for name, linear in quantizable_linears(model, config):
        log.warning("%s is outside the decoder blocks: quantized with RTN, not %s", name, config.algorithm)
        replace_linear(model, name, rtn(linear.weight, config).pack(config), linear.bias, config)
    return model

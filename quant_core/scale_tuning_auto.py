"""``scale_tuning_steps=None`` (the default): whether scale tuning runs, decided where calibration runs.

Measured (benchmarks/results/quality.md, issue 19): 128 steps of scale tuning after the algorithm
lowered perplexity on both texts in every cell tried (after GPTQ, SignRound, QuantEase with outliers
and RTN; int4/int3/int2, groups and per-channel), e.g. GPTQ int4 g128 sym 28.07 / 21.65 -> 27.51 /
20.12. It costs ~60-120 s for SmolLM2 on an H200, but ~70 min at 128 steps on a 2-core CPU
(docs/calibration_speed.md), where the algorithms themselves take 2-5 min. So "auto" runs 128 steps
where a calibrated algorithm calibrates on a CUDA GPU with room to train the whole model, and none
elsewhere; RTN, which needs no calibration data, stays without (ask for steps to tune after it).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .config import QuantConfig

log = logging.getLogger("quant_core")

AUTO_STEPS = 128
FREE_SHARE = 0.8  # of the GPU's free memory the estimate may take: the estimate is rough


def training_bytes(model: nn.Module, config: QuantConfig) -> int:
    """An upper estimate of scale tuning's peak device memory for a decoder-only transformers model:
    the parameters three times (fp32, dequantized weights and their gradients' temporaries), the
    activations a backward keeps per layer for one step's tokens, the step's vocabulary-sized logits
    six times (student, teacher, log-softmaxes, their gradients), and the teacher's captured states.
    Calibrated on the H200 (benchmarks/scale_tuning_memory.py, SmolLM2-135M's shape, GPTQ then 128
    steps): peak 13.87 GiB of torch's allocations; this gives 16.5 (its first form, 11.3, was below)."""
    cfg = getattr(model, "config", None)
    hidden = getattr(cfg, "hidden_size", 0)
    inter = getattr(cfg, "intermediate_size", None) or 4 * hidden
    layers, vocab = getattr(cfg, "num_hidden_layers", 0), getattr(cfg, "vocab_size", 0)
    tokens = config.scale_tuning_batch_windows * config.seqlen
    params = sum(p.numel() for p in model.parameters()) * 4 * 3
    activations = layers * tokens * (18 * hidden + 8 * inter) * 4
    logits = tokens * vocab * 4 * 6
    teacher = config.n_samples * config.seqlen * hidden * 4
    return params + activations + logits + teacher


def resolve_scale_tuning(model: nn.Module, config: QuantConfig, device, calibrated: bool,
                         free_bytes: int | None = None) -> QuantConfig:
    """``config`` with ``scale_tuning_steps`` an int: as given, or for None ``AUTO_STEPS`` or 0 by where
    ``calibrated`` algorithms calibrate (``device``) and, on CUDA, ``free_bytes`` (default: the
    device's free memory now). The choice and its reason go to the log."""
    if config.scale_tuning_steps is not None:
        return config
    steps, why = _auto_steps(model, config, torch.device(device), calibrated, free_bytes)
    log.info("scale tuning (scale_tuning_steps=None, auto): %s; %s", f"{steps} steps" if steps else "off", why)
    return config.model_copy(update={"scale_tuning_steps": steps})


def _auto_steps(model: nn.Module, config: QuantConfig, device: torch.device, calibrated: bool,
                free_bytes: int | None) -> tuple[int, str]:
    if not calibrated:
        return 0, f"algorithm={config.algorithm!r} needs no calibration data (set scale_tuning_steps to tune after it)"
    if device.type != "cuda":
        return 0, (f"calibration runs on {device.type}, where 128 steps take about an hour for a 135M model on 2 "
                   f"cores; scale_tuning_steps=16 with scale_tuning_lr=0.005 buys most of the gain for ~15 min")
    if config.scale_tuning_batch_windows > config.calibration_batch_size:
        return 0, (f"scale_tuning_batch_windows={config.scale_tuning_batch_windows} exceeds calibration_batch_size="
                   f"{config.calibration_batch_size}")
    need = training_bytes(model, config)
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    if need > FREE_SHARE * free_bytes:
        return 0, (f"training the whole model needs about {need / 2**30:.1f} GiB, more than {FREE_SHARE:.0%} of the "
                   f"{free_bytes / 2**30:.1f} GiB free on {device}; set scale_tuning_steps to try anyway")
    return AUTO_STEPS, f"about {need / 2**30:.1f} GiB of the {free_bytes / 2**30:.1f} GiB free on {device}"

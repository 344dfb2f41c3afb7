"""Scale tuning: EfficientQAT's E2E-QP (Chen et al. 2024, arXiv 2407.11062) after any algorithm.

Block-wise algorithms fit each block to its float outputs and freeze it, so their errors add up
block after block. With ``config.scale_tuning_steps > 0`` this stage then trains every quantized
linear's group scales through the whole model (``trainable_scales.py``: codes and zero points frozen,
fp32 log-scales), with Adam on a cosine-decaying rate, one mini-batch of
``scale_tuning_batch_windows`` calibration windows a step, epoch after epoch in a seeded order. The
objective (``scale_tuning_objective``): the KL divergence from the float model's next-token
distributions ("kl"; the float model's final hidden states, the output head's inputs, are captured
before quantization, and its logits are recomputed per batch through the float head, so no
vocabulary-sized tensor is kept per token), or the windows' own next-token cross-entropy ("ce").

The trained scales are rounded to their stored dtype and kept only if the objective over all
calibration windows, measured with those stored scales, is lower than the algorithm's; else the
algorithm's layers stay. Forwards run in the calibration precision (bf16 autocast where
``calibration_dtype`` resolves to it). The whole model moves to the calibration device for this stage.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..calibration import forward_precision
from ..config import QuantConfig
from ..model_surgery import replace_linear
from ..modules import QuantLinear
from .trainable_scales import TrainableScales

log = logging.getLogger("quant_core")


class ScaleTuning:
    """The stage for one quantization: created on the float model, run on the quantized one."""

    def __init__(self, model: nn.Module, config: QuantConfig, batches: list[torch.Tensor], device):
        self.config, self.device = config, torch.device(device)
        bw = config.scale_tuning_batch_windows
        self.items = [b[i:i + bw] for b in batches for i in range(0, len(b), bw)]
        self.teacher: list[torch.Tensor] = []  # the float head's inputs per item ("kl")
        if config.scale_tuning_objective == "kl":
            with _on(model, self.device):
                head = model.get_output_embeddings()
                # references on the device, taken there: no algorithm changes the head in place
                self.head_weight = head.weight.detach()
                self.head_bias = None if head.bias is None else head.bias.detach()
                self.teacher = self._head_inputs(model, head)

    def _head_inputs(self, model: nn.Module, head: nn.Module) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        try:
            with torch.no_grad(), forward_precision(self.config, self.device):
                for ids in self.items:
                    model(input_ids=ids.to(self.device), use_cache=False)
        finally:
            hook.remove()
        return seen

    def loss_on(self, model: nn.Module, index: int) -> torch.Tensor:
        """The objective on item ``index``: mean over its predicted tokens."""
        ids = self.items[index].to(self.device)
        with forward_precision(self.config, self.device):
            logits = model(input_ids=ids, use_cache=False).logits
        if self.config.scale_tuning_objective == "ce":
            return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        with forward_precision(self.config, self.device):
            target = F.linear(self.teacher[index], self.head_weight, self.head_bias)
        student = F.log_softmax(logits.flatten(0, 1).float(), dim=-1)
        teacher = F.log_softmax(target.flatten(0, 1).float(), dim=-1)
        return F.kl_div(student, teacher, log_target=True, reduction="batchmean")

    def loss(self, model: nn.Module) -> float:
        """The objective over every calibration window (token-weighted), as the model computes now."""
        with torch.no_grad(), _on(model, self.device):
            weights = [self.items[i].numel() for i in range(len(self.items))]
            total = sum(float(self.loss_on(model, i)) * w for i, w in enumerate(weights))
        return total / sum(weights)

    def run(self, model: nn.Module, progress: bool = True) -> tuple[float, float]:
        """Train ``model``'s quantized scales; returns the objective before and after (the model keeps
        the trained scales only if after < before)."""
        with _on(model, self.device), _frozen(model):
            layers = {name: TrainableScales(m) for name, m in model.named_modules() if isinstance(m, QuantLinear)}
            originals = {name: _swap(model, name, layer) for name, layer in layers.items()}
            try:
                before = self.loss(model)
                with torch.enable_grad():
                    self._train(model, [layer.log_ratio for layer in layers.values()], progress)
            except torch.OutOfMemoryError:  # the algorithm's work is done: keep it rather than lose it
                for name in layers:
                    _swap(model, name, originals[name])
                _out_of_memory(self.device)
                return float("nan"), float("nan")
            stored = {name: layer.stored() for name, layer in layers.items()}
            for name, layer in layers.items():
                layer.restart_from(stored[name])
            after = self.loss(model)
            keep = after < before
            for name, layer in layers.items():
                if keep:
                    replace_linear(model, name, stored[name], originals[name].bias, self.config)
                else:
                    _swap(model, name, originals[name])
        log.info("scale tuning: calibration %s %.5f -> %.5f: %s", self.config.scale_tuning_objective, before, after,
                 "kept" if keep else "not lower, the algorithm's scales stay")
        return before, after

    def _train(self, model: nn.Module, params: list[nn.Parameter], progress: bool) -> None:
        steps = self.config.scale_tuning_steps
        optimizer = torch.optim.Adam(params, lr=self.config.scale_tuning_lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
        order = _epochs(len(self.items), self.config.calibration_seed)
        bar = tqdm(range(steps), desc="scale tuning", disable=not progress, unit="step")
        for _ in bar:
            loss = self.loss_on(model, next(order))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)


def start_scale_tuning(model: nn.Module, config: QuantConfig, batches: list[torch.Tensor],
                       device) -> ScaleTuning | None:
    """The stage, prepared on the float model before any quantization; None when it is off (or its
    teacher pass does not fit on the device)."""
    if not config.scale_tuning_steps:
        return None
    try:
        return ScaleTuning(model, config, batches, device)
    except torch.OutOfMemoryError:
        _out_of_memory(torch.device(device))
        return None


def _out_of_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log.warning("scale tuning ran out of memory on %s and was skipped: the algorithm's scales stay (the checkpoint "
                "is as with scale_tuning_steps=0, though its config records the steps asked); calibrate on a larger "
                "device, or lower scale_tuning_batch_windows", device)


def _epochs(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(n, generator=generator).tolist()


def _swap(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, module)
    return old


class _on:
    """The model on ``device`` inside, back where its first parameter was after."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.home = next(model.parameters()).device

    def __enter__(self):
        self.model.to(self.device)

    def __exit__(self, *exc):
        self.model.to(self.home)


class _frozen:
    """No float parameter of the model takes gradients inside (only the scales train)."""

    def __init__(self, model: nn.Module):
        self.flags = {p: p.requires_grad for p in model.parameters()}

    def __enter__(self):
        for p in self.flags:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, flag in self.flags.items():
            p.requires_grad_(flag)

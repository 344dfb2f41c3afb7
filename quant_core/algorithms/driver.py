"""The one block-sequential driver of every calibrated algorithm.

A calibrated algorithm is a per-block step plus its own config fields:
``@calibrated_algorithm("name")`` on ``step(block: CalibrationBlock) -> None`` registers a
handler with ``quantize`` that

1. fails before any work: an architecture ``quant_core.blocks`` does not know, missing or
   too little calibration data (``calibration.resolve_calibration``);
2. walks the decoder blocks (``blocks.run_blockwise``) and calls the step on each, with the
   block's inputs (the quantized outputs of the blocks before it). The step hands codes to
   ``block.install``, which writes them back *fake-quantized* (dequantized floats) so the rest
   of the block and the next blocks see quantized outputs at float speed; once the block's
   outputs have moved on, its installed linears become ``QuantLinear``s;
3. quantizes with RTN, in one warning, every quantizable linear no step installed: an
   ``lm_head`` that is not excluded, linears outside the decoder blocks, linears of a block
   that a step does not cover;
4. with ``config.scale_tuning_steps``, trains the quantized model's scales end to end
   (``scale_tuning.py``), prepared on the float model before step 2.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..blocks import Architecture, BlockInputs, architecture_of, default_device, run_blockwise
from ..calibration import forward_precision, resolve_calibration
from ..config import QuantConfig
from ..freed_memory import release_freed_memory
from ..model_surgery import quantizable_linears, replace_linear
from ..packed import PackedWeight
from ..quantize import register_algorithm
from .module_replay import ModuleReplay
from .base import QuantResult
from .rtn import rtn
from .scale_tuning import start_scale_tuning

log = logging.getLogger("quant_core")


@dataclass
class CalibrationBlock:
    """One decoder block as a step sees it (on the compute device), and where its codes go."""
    module: nn.Module
    inputs: BlockInputs  # the block's inputs for every calibration batch
    index: int
    prefix: str  # the block's name in the model, e.g. "model.layers.3"
    arch: Architecture
    config: QuantConfig
    model_config: Any  # the model's transformers config (head counts, fused layouts)
    installed: dict[str, PackedWeight] = field(default_factory=dict)
    replays: dict[str, ModuleReplay] = field(default_factory=dict)  # sub-module -> its recorded outputs
    # One dict shared by every block of a run, for what a step carries from block to block (SignRound:
    # the float model's hidden states, which the driver's quantized inputs no longer show).
    run_state: dict[str, Any] = field(default_factory=dict)
    progress: bool = True  # whether a step may show its own progress bar (quantize(progress=...))

    def replay_module(self, name: str, projection: str | None = None) -> None:
        """From now until the block's outputs are computed, the forwards take sub-module ``name``'s
        outputs from the first of them (``module_replay.py``): call once it is final, or with
        ``projection`` (its output linear) once everything before that linear is."""
        if name in self.replays:
            self.replays[name].projection_final()
        else:
            self.replays[name] = ModuleReplay(self.module, self.module.get_submodule(name), self.inputs.hidden,
                                              self.module.get_submodule(projection) if projection else None)

    def finish(self) -> None:
        """After the block's outputs: stop replaying, swap installed linears for ``QuantLinear``s,
        hand the block's freed memory back to the OS (``freed_memory.py``: else the resident size
        grows block after block)."""
        self.stop_replay()
        self.replace_installed()
        release_freed_memory()

    def stop_replay(self) -> None:
        for replay in self.replays.values():
            replay.close()
        self.replays.clear()

    def linear_groups(self) -> list[list[str]]:
        """Names (relative to the block) of the linears to quantize, grouped by shared input in
        execution order, minus those the config skips; linears the architecture table does not
        know come last, each alone."""
        groups = [names for group in self.arch.groups
                  if (names := [n for n in group.names if not self.skips(n)])]
        known = set(self.arch.linear_names())
        for name, mod in self.module.named_modules():
            if isinstance(mod, nn.Linear) and name not in known and not self.skips(name):
                log.info("%s.%s is not in the architecture table; quantizing it on its own", self.prefix, name)
                groups.append([name])
        return groups

    def skips(self, name: str) -> bool:
        return self.config.skips(f"{self.prefix}.{name}")

    def install(self, results: dict[str, QuantResult]) -> None:
        """The linears named in ``results`` compute with those codes from now on (the ones
        the config skips keep their float weights)."""
        for name, result in results.items():
            if self.skips(name):
                continue
            linear = self.module.get_submodule(name)
            packed = result.pack(self.config)
            with torch.no_grad():
                linear.weight.copy_(packed.dequantize(linear.weight.dtype))
            self.installed[name] = packed

    def replace_installed(self) -> None:
        """Swap each installed linear for a ``QuantLinear`` on the linear's device."""
        for name, packed in self.installed.items():
            linear = self.module.get_submodule(name)
            replace_linear(self.module, name, packed, linear.bias, self.config).to(linear.weight.device)
        self.installed.clear()


Step = Callable[[CalibrationBlock], None]


def calibrate(model: nn.Module, config: QuantConfig, step: Step, calibration=None, tokenizer=None,
              progress: bool = True, device=None, desc: str = "calibrate") -> nn.Module:
    """Quantize ``model`` block by block with ``step`` (see the module docstring)."""
    arch = architecture_of(model)  # unsupported architectures fail here, before any work
    batches = resolve_calibration(config, calibration, tokenizer)
    tuning = start_scale_tuning(model, config, batches, device or default_device())  # on the float model
    current: list[CalibrationBlock] = []
    run_state: dict[str, Any] = {}

    def per_block(module: nn.Module, inputs: BlockInputs, index: int) -> None:
        current[:] = [CalibrationBlock(module, inputs, index, f"{arch.layers}.{index}", arch, config,
                                       getattr(model, "config", None), run_state=run_state,
                                       progress=progress)]
        step(current[0])

    try:
        run_blockwise(model, batches, per_block, device=device, progress=progress, desc=desc,
                      after_block_fn=lambda _module, _index: current[0].finish(),
                      forward_context=lambda dev: forward_precision(config, dev))
    finally:  # a step that failed leaves no replaying attention behind
        if current:
            current[0].stop_replay()
    leftovers = quantizable_linears(model, config)
    if leftovers:
        log.warning("%s does not cover %s: quantized with RTN", desc, ", ".join(name for name, _ in leftovers))
    for name, linear in leftovers:
        replace_linear(model, name, rtn(linear.weight, config).pack(config), linear.bias, config)
    if tuning is not None:
        tuning.run(model, progress)
    return model


def calibrated_algorithm(name: str) -> Callable[[Step], Step]:
    """Decorator: register ``step`` as algorithm ``name``, run by ``calibrate``."""
    def register(step: Step) -> Step:
        def handler(model: nn.Module, config: QuantConfig, *, calibration=None, tokenizer=None,
                    progress: bool = True, device=None) -> nn.Module:
            return calibrate(model, config, step, calibration, tokenizer, progress=progress, device=device,
                             desc=name.upper())
        register_algorithm(name, calibrated=True)(handler)
        return step
    return register

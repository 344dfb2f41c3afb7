"""What AWQ and TEQ record about each linear's input on a block's float forward."""
from __future__ import annotations

import torch

from ..blocks import record_inputs
from ..calibration import calibration_dtype_on, forward_precision, statistics_rows
from ..kernels.cpu_gram import accumulate_gram, gram_kernel_reason
from .driver import CalibrationBlock
from .equalize import ScaleGroup


class InputStats:
    """Running statistics of one linear's input over the calibration tokens.

    ``H = sum x x^T`` gives the exact squared output error of any weight change
    ``dW`` as ``trace(dW H dW^T)`` (``primitives.output_error``); ``abs_mean`` is AWQ's
    per-channel salience; a fixed-size random ``sample`` of token rows (kept only when
    ``keep_tokens > 0``) feeds TEQ's mini-batches.
    """

    def __init__(self, in_features: int, keep_tokens: int = 0, seed: int = 0, bf16: bool = False):
        self.in_features = in_features
        self.H: torch.Tensor | None = None  # allocated on the first input's device
        self.abs_sum: torch.Tensor | None = None
        self.n = 0
        self.keep_tokens = keep_tokens
        self.sample: torch.Tensor | None = None
        self._gen = torch.Generator().manual_seed(seed)
        self.bf16 = bf16  # H from bf16 inputs by the CPU kernel where it runs (hessians.Hessian says why)
        self._gram = False  # whether that kernel sums H: known once H is allocated on the inputs' device

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.in_features)
        if self.H is None:
            self.H = torch.zeros(self.in_features, self.in_features, device=x.device)
            self.abs_sum = torch.zeros(self.in_features, device=x.device)
            self._gram = self.bf16 and not gram_kernel_reason(self.H)
        if self._gram:
            accumulate_gram(self.H, x, 1.0)
        x = x.float()
        if not self._gram:
            with torch.autocast(x.device.type, enabled=False):  # fp32 sums, also inside bf16 calibration forwards
                self.H.addmm_(x.T, x)
        self.abs_sum += x.abs().sum(0)
        self.n += x.shape[0]
        if self.keep_tokens:  # keep the rows with the smallest random keys: a uniform sample of all seen
            keys = torch.rand(x.shape[0], generator=self._gen).to(x.device)
            if self.sample is not None:
                x, keys = torch.cat([self.sample, x]), torch.cat([self._keys, keys])
            keep = keys.argsort()[:self.keep_tokens]
            self.sample, self._keys = x[keep], keys[keep]

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.n, 1)

    def rescale(self, s_in: torch.Tensor) -> None:
        """The input became ``x / s_in`` (scales folded upstream): update the statistics."""
        s_in = s_in.float().to(self.H.device)
        self.H /= s_in.unsqueeze(0) * s_in.unsqueeze(1)
        self.abs_sum /= s_in
        if self.sample is not None:
            self.sample = self.sample / s_in


def collect_input_stats(block: CalibrationBlock, groups: list[ScaleGroup],
                        keep_tokens: int = 0) -> dict[str, InputStats]:
    """Run the block (still float) on its inputs; one ``InputStats`` per group, under each of its names."""
    stats, skip = {}, block.config.calibration_skip_tokens
    bf16 = calibration_dtype_on(block.config, block.inputs.hidden[0].device) == "bf16"
    for g in groups:
        shared = InputStats(g.in_features, keep_tokens=keep_tokens, seed=block.index, bf16=bf16)
        stats.update({n: shared for n in g.names})
    names = [g.names[0] for g in groups]
    with torch.no_grad(), record_inputs(block.module, names, lambda n, x: stats[n].add(statistics_rows(x, skip))), \
            forward_precision(block.config, block.inputs.hidden[0].device):
        block.inputs.forward(block.module)
    return stats

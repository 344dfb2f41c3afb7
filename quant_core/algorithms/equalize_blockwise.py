"""Per-block plumbing shared by AWQ and TEQ: input statistics of each linear, and the
block-sequential driver run with an equalizing per-block quantizer."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..model_surgery import quantizable_linears, replace_linear
from .equalize import scale_groups


class InputStats:
    """Running statistics of one linear's input over the calibration tokens.

    ``H = sum x x^T`` gives the exact squared output error of any weight change
    ``dW`` as ``trace(dW H dW^T)``; ``abs_mean`` is AWQ's per-channel salience; a
    fixed-size random ``sample`` of token rows (kept only when ``keep_tokens > 0``)
    feeds TEQ's mini-batches.
    """

    def __init__(self, in_features: int, keep_tokens: int = 0, seed: int = 0):
        self.in_features = in_features
        self.H: torch.Tensor | None = None  # allocated on the first input's device
        self.abs_sum: torch.Tensor | None = None
        self.n = 0
        self.keep_tokens = keep_tokens
        self.sample: torch.Tensor | None = None
        self._gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.in_features).float()
        if self.H is None:
            self.H = torch.zeros(self.in_features, self.in_features, device=x.device)
            self.abs_sum = torch.zeros(self.in_features, device=x.device)
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


MIN_CALIBRATION_TOKENS = 128


def check_calibration(batches: list) -> int:
    """Token count of the calibration batches; raises before any work when there are too few."""
    total = 0
    for b in batches:
        ids = b["input_ids"] if isinstance(b, dict) else b
        total += ids.numel()
    if total < MIN_CALIBRATION_TOKENS:
        raise ValueError(f"calibration data has {total} tokens, fewer than the {MIN_CALIBRATION_TOKENS} "
                         f"needed to estimate activation statistics; pass more or longer samples "
                         f"(e.g. n_samples=128, seqlen=512)")
    return total


def quantize_blockwise(model: nn.Module, config, block_fn, calibration=None, tokenizer=None,
                       progress: bool = True, device=None, desc: str = "blocks",
                       keep_tokens: int = 0, parent_batches: int = 0) -> nn.Module:
    """Run the block-sequential driver with an equalizing per-block quantizer.

    ``block_fn(groups, stats, config) -> {name: QuantResult}`` sees one block's scale
    groups (with the parent modules' inputs of the first ``parent_batches`` batches)
    and the input statistics of its linears (recorded on the block's float
    forward over the calibration inputs) and may rescale weights in place. Linears that
    ``config`` skips keep their (rescaled) float weights; quantizable linears outside
    the decoder blocks are quantized by RTN.
    """
    from ..blocks import architecture_of, record_inputs, run_blockwise
    from .calibrated import resolve_calibration
    from .rtn import rtn

    arch = architecture_of(model)  # unsupported architectures fail here, before any work
    batches = resolve_calibration(config, calibration, tokenizer)
    check_calibration(batches)

    def per_block(block, inputs, i):
        prefix = f"{arch.layers}.{i}."
        groups = scale_groups(block, arch, getattr(model, "config", None))
        stats = {}
        for g in groups:
            shared = InputStats(g.in_features, keep_tokens=keep_tokens, seed=i)
            stats.update({n: shared for n in g.names})
        with torch.no_grad(), record_inputs(block, [g.names[0] for g in groups], lambda n, x: stats[n].add(x)), \
                record_parent_inputs(groups, parent_batches):
            inputs.forward(block)
        results = block_fn(groups, stats, config)
        for name, result in results.items():
            if config.skips(prefix + name):
                continue
            linear = block.get_submodule(name)
            replace_linear(block, name, result.pack(config), linear.bias, config)

    run_blockwise(model, batches, per_block, device=device, progress=progress, desc=desc)
    for name, linear in quantizable_linears(model, config):  # e.g. lm_head when not skipped
        replace_linear(model, name, rtn(linear.weight, config).pack(config), linear.bias, config)
    return model


@contextlib.contextmanager
def record_parent_inputs(groups, max_batches: int):
    """Keep the (args, kwargs) of each group's parent module for its first ``max_batches`` calls."""
    handles = []
    for group in groups:
        group.parent_inputs = []
        if group.parent is None or max_batches <= 0:
            continue

        def hook(_module, args, kwargs, _group=group):
            if len(_group.parent_inputs) < max_batches:
                _group.parent_inputs.append((tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                                             dict(kwargs)))
        handles.append(group.parent.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()

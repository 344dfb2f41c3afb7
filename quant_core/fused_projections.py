"""Sibling linears that read the same input (q/k/v, gate/up) run as one kernel call.

Inside a decoder layer each quantized linear pays a fixed cost per launch (on the GPU ~2 us, and
small shapes such as k/v reach less bandwidth than large ones). Their weights share the input
width, format and group size, so their packed rows can be stacked along N into one weight and
run once; each member then takes its column slice of that output. The members keep their own
buffers (checkpoints and ``state_dict`` are unchanged): the stacked weight is only what the
group's kernel is built from, as each member's own kernel would have been built from its rows.

``fuse_projections`` makes the groups; ``StaticDecoder`` (the GPU decode path) applies it on CUDA
when ``fusion_wanted`` says so: $QUANTLLM_FUSE_PROJECTIONS "1" on, "0" off, unset the default.

A member whose input is not the one the group last ran on (another tensor, or a member asked
twice) runs the stacked call again, so the result never depends on call order.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .kernels.base import LayerSpec
from .kernels.registry import choose_kernel
from .modules import QuantLinear, check_same_device
from .packed import PackedWeight

FUSE_ENV = "QUANTLLM_FUSE_PROJECTIONS"
DEFAULT_ON_CUDA = True  # H200 decode, synthetic 8B: int4 1.38x -> 1.52x bf16 at batch 1 (commit message)
# child names of one parent module that take the same input (Llama, Mistral, Qwen, Gemma, ...)
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def stacked(parts: list[PackedWeight]) -> PackedWeight:
    """One weight whose output rows are ``parts``' rows in order (same codes and scales)."""
    first = parts[0]

    def cat(name: str):
        return None if getattr(first, name) is None else torch.cat([getattr(p, name) for p in parts])

    return PackedWeight(first.fmt, first.in_features, sum(p.out_features for p in parts), first.group_size,
                        cat("qweight"), cat("scales"), cat("zeros"), first.g_idx)


def fusion_reason(members: list[nn.Module]) -> str | None:
    """Why these linears cannot share one kernel call (None: they can)."""
    if not all(isinstance(m, QuantLinear) for m in members):
        return "not every member is a QuantLinear"
    first = members[0]
    if any(m.outlier_structure is not None for m in members):
        return "a member has sparse outliers"

    def same(attr) -> bool:
        return len({attr(m) for m in members}) == 1

    checks = {"input width": lambda m: m.in_features, "format": lambda m: m.weight_dtype,
              "group size": lambda m: m.group_size, "zero points": lambda m: m.packed.zero_mode,
              "scale dtype": lambda m: m.scales.dtype, "compute dtype": lambda m: m.compute_dtype,
              "forced kernel": lambda m: m.forced_kernel, "device": lambda m: m.qweight.device,
              "zero dtype": lambda m: None if m.zeros is None else m.zeros.dtype}
    for what, attr in checks.items():
        if not same(attr):
            return f"members differ in {what}"
    if first.g_idx is not None and not all(m.g_idx is not None and torch.equal(m.g_idx, first.g_idx)
                                           for m in members):
        return "members differ in act-order group indices"
    return None


class FusedProjections:
    """Linears reading one input as one kernel over their stacked weights; not a module (holds no state
    a checkpoint sees). ``QuantLinear.forward`` asks ``output(member, x)`` for its columns."""

    def __init__(self, members: list[QuantLinear]):
        self.members = members
        ends = torch.tensor([m.out_features for m in members]).cumsum(0).tolist()
        self.columns = {id(m): (end - m.out_features, end) for m, end in zip(members, ends)}
        self.reset()

    def reset(self) -> None:
        """Forget the kernel and the last output (members moved, cast or reloaded)."""
        self.kernel, self._key = None, None
        self._x = self._y = None
        self._taken: set[int] = set()

    def _prepare(self, x: torch.Tensor):
        key = (x.device, x.dtype)
        if self.kernel is None or self._key != key:
            first = self.members[0]
            check_same_device(first.qweight, x)
            packed = stacked([m.packed.without_outliers() for m in self.members])
            spec = LayerSpec.of(packed, first.resolved_compute_dtype(x.device.type, x.dtype), x.device.type)
            self.kernel, self._key = choose_kernel(spec, first.forced_kernel)(packed, spec), key
        return self.kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's columns side by side, without the members' biases (the CUDA lean step reads this)."""
        return self._prepare(x).forward(x)

    def output(self, member: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        """``member``'s columns of the stacked product with ``x`` (computed once per input)."""
        if x is not self._x or id(member) in self._taken:
            self._y, self._x, self._taken = self.forward(x), x, set()
        self._taken.add(id(member))
        lo, hi = self.columns[id(member)]
        y = self._y[..., lo:hi]
        if len(self._taken) == len(self.members):  # every member served: hold no activations
            self._x = self._y = None
        return y


def fuse_projections(model: nn.Module) -> int:
    """Group every fusable set of ``SIBLINGS`` in ``model``; returns how many groups were made."""
    made = 0
    for parent in model.modules():
        for names in SIBLINGS:
            members = [getattr(parent, n, None) for n in names]
            if any(m is None for m in members) or fusion_reason(members) is not None:
                continue
            group = FusedProjections(members)
            for m in members:
                m.fused, m._kernel = group, None  # the group's kernel replaces the members' own copies
            made += 1
    return made


def unfuse_projections(model: nn.Module) -> None:
    """Every linear runs its own kernel again."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.fused = None


def fusion_wanted(device_type: str) -> bool:
    """Whether the decode path fuses sibling projections on this device type ($QUANTLLM_FUSE_PROJECTIONS)."""
    setting = os.environ.get(FUSE_ENV, "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    return DEFAULT_ON_CUDA and device_type == "cuda"

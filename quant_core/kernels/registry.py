"""Kernel chooser: per-device priority lists; every rejection comes with a reason.

Kernels are named as ``module:Class`` (``kernel_names.KERNELS``) and imported only when considered, so an
optional backend that is not installed costs nothing and says why it was skipped.
"""
from __future__ import annotations

import importlib
import logging
import os

from .base import Kernel, LayerSpec
from ..errors import NoKernelError
from ..kernel_names import KERNELS  # as data in the lowest layer, so QuantConfig can check a kernel's name

log = logging.getLogger("quant_core.kernels")

# Fastest first; "reference" last so a choice always exists.
PRIORITY: dict[str, list[str]] = {
    "cpu": ["ipex", "cpu_avx512", "cpu_avx2", "reference"],
    "cuda": ["cuda", "triton", "reference"],
}

FORCE_ENV = "QUANTLLM_KERNEL"




def load_kernel_class(name: str) -> type[Kernel]:
    if name not in KERNELS:
        raise NoKernelError(f"unknown kernel {name!r}; known kernels: {', '.join(KERNELS)}")
    module, cls = KERNELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _ask(name: str, spec: LayerSpec) -> tuple[bool, str]:
    try:
        return load_kernel_class(name).can_implement(spec)
    except Exception as exc:  # an optional backend that fails to import is a reason, not a crash
        return False, f"unavailable: {type(exc).__name__}: {exc}"


def explain(spec: LayerSpec) -> list[tuple[str, bool, str]]:
    """Every kernel on this device's list with its verdict, in priority order."""
    return [(name, *_ask(name, spec)) for name in PRIORITY.get(spec.device_type, ["reference"])]


def choose_kernel(spec: LayerSpec, forced: str | None = None) -> type[Kernel]:
    """The first kernel that can run ``spec``; ``forced`` (or $QUANTLLM_KERNEL) must be able to."""
    forced = forced or os.environ.get(FORCE_ENV) or None
    if forced:
        ok, reason = _ask(forced, spec)
        if not ok:
            raise NoKernelError(f"kernel {forced!r} was forced but cannot run {spec}: {reason}")
        return load_kernel_class(forced)
    verdicts = explain(spec)
    for name, ok, _ in verdicts:
        if ok:
            _log_choice(name, spec, verdicts)
            return load_kernel_class(name)
    reasons = "; ".join(f"{n}: {r}" for n, _, r in verdicts)
    raise NoKernelError(f"no kernel can run {spec}. Reasons: {reasons}")


_LOGGED: set = set()


def _log_choice(name: str, spec: LayerSpec, verdicts) -> None:
    """One log line per distinct layer spec: the kernel chosen and why the ones before it were not."""
    if spec in _LOGGED:
        return
    _LOGGED.add(spec)
    rejected = "; ".join(f"{n}: {r}" for n, ok, r in verdicts if not ok and n != name)
    log.info("kernel %s for %s %dx%d group %d (%s compute)%s", name, spec.weight_dtype, spec.in_features,
             spec.out_features, spec.group_size, spec.compute_dtype, f"; rejected: {rejected}" if rejected else "")

"""Every module of the core has a place in the import-linter layers contract (pyproject.toml).

import-linter only constrains the modules a contract names, so a new module left out of the
layers could import anything: this test makes adding it to a layer part of adding it.
"""
from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import quant_core

ROOT = Path(__file__).resolve().parents[1]
UNLAYERED = {"testing"}  # helpers for the project's own tests, imported by nothing in the package


def _layered_modules() -> set[str]:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    return {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}


def test_every_core_module_is_in_a_layer():
    layered = _layered_modules()
    modules = {f"quant_core.{m.name}" for m in pkgutil.iter_modules(quant_core.__path__) if m.name not in UNLAYERED}
    missing = sorted(modules - layered)
    assert not missing, f"add these to a layer of [tool.importlinter] in pyproject.toml: {missing}"


def test_layers_name_only_modules_that_exist():
    modules = {f"quant_core.{m.name}" for m in pkgutil.iter_modules(quant_core.__path__)}
    stale = sorted(n for n in _layered_modules() if n.startswith("quant_core.") and n not in modules)
    assert not stale, f"pyproject.toml's layers name modules that no longer exist: {stale}"

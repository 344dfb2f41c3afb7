"""Every non-Python file of the packages is in the wheel: ``pip install .`` (not editable) copies only
what [tool.setuptools.package-data] names, and a kernel source or header left out fails the kernel's
build on the user's machine (the CUDA sources, the CPU headers and cuda_defaults.json once were).
"""
from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("quant_core", "langchain_quant", "llamaindex_quant")
BUILT_HERE = {".py", ".pyc", ".so", ".pyd"}  # Python modules ship anyway; built files are made at run time


def _matches(rel: str, pattern: str) -> bool:
    """setuptools' package-data glob: ``*`` stays within one folder."""
    return rel.count("/") == pattern.count("/") and fnmatch.fnmatchcase(rel, pattern)


def test_every_data_file_of_the_packages_is_package_data():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if not path.is_file() or path.suffix in BUILT_HERE or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT / package).as_posix()
            if not any(_matches(rel, p) for p in package_data.get(package, [])):
                missing.append(f"{package}/{rel}")
    assert not missing, f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"


def test_the_matcher_keeps_stars_within_one_folder():
    assert _matches("kernels/csrc/simd.h", "kernels/csrc/*.h")
    assert not _matches("kernels/csrc/simd.h", "kernels/*.h")
    assert not _matches("kernels/csrc/simd.h", "kernels/csrc/*.cpp")

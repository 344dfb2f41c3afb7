"""The lower end of the dependency range that pyproject.toml states, against what this Python has.

``python scripts/lower_end.py`` prints ``torch==X transformers==Y`` (the lowest versions the range
admits) when this environment has something else, and nothing when it already is the lower end.
"""
from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PACKAGES = ("torch", "transformers")  # the two whose versions change what our code does


def lower_ends() -> dict[str, Version]:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    found = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        lows = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
        if requirement.name in PACKAGES and lows:
            found[requirement.name] = max(lows)
    missing = set(PACKAGES) - set(found)
    if missing:
        raise SystemExit(f"pyproject.toml states no lower bound (>=) for {sorted(missing)}")
    return found


def main() -> None:
    lows = lower_ends()
    here = {name: Version(Version(version(name)).base_version) for name in PACKAGES}  # 2.13.0+cpu -> 2.13.0
    if any(here[name] != low for name, low in lows.items()):
        print(" ".join(f"{name}=={lows[name]}" for name in PACKAGES))


if __name__ == "__main__":
    main()

"""Fold what a device call brought back into the stored results, keeping every figure it replaces.

    python benchmarks/quality_merge.py /work/.device/N/quality_cells.json [/work/.device/N/quality_peer.json]

``quality_cells.json`` (quality_parallel.py's merged worker stores) goes into quality.json: its run is
added, and each of its cells replaces the stored cell whole, since both texts' figures then come from one
quantization; the replaced cell moves to ``superseded[key]`` (a list, oldest first) so no figure is
thrown away. ``quality_peer.json`` goes into quality_peer.json the same way (``results`` instead of
``cells``), its library versions added to the setup. A smoke run (``windows_override`` in its run) is
refused: its figures are not on the table's windows. The markdown files are rendered afterwards.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render  # noqa: E402
import report  # noqa: E402
from quality_columns import STORE  # noqa: E402
from quality_peer_report import PEER  # noqa: E402


def fold(store: str, incoming: dict, section: str) -> list[str]:
    """Add ``incoming``'s runs and its ``section`` entries to ``store``; returns the keys replaced."""
    smoke = [r for r, run in incoming.get("runs", {}).items() if run.get("windows_override")]
    if smoke:
        raise SystemExit(f"refusing runs {smoke}: a smoke test (windows_override) is not the table's windows")
    data = report.load(store)
    unknown = {e.get("run") for e in incoming.get(section, {}).values()} - set(incoming.get("runs", {}))
    if unknown - {None}:
        raise SystemExit(f"entries name runs the file does not hold: {sorted(unknown - {None})}")
    tasks = incoming.get("parallel", {}).get("tasks")
    for run_id, run in incoming.get("runs", {}).items():
        if tasks is not None:  # what the call could not finish, beside the run that left it
            run = {**run, "cells": ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in tasks.items())}
        data.setdefault("runs", {}).setdefault(run_id, run)
    replaced = []
    for key, entry in incoming.get(section, {}).items():
        old = data.setdefault(section, {}).get(key)
        if old is not None and old != entry:
            data.setdefault("superseded", {}).setdefault(key, []).append(old)
            replaced.append(key)
        data[section][key] = entry
    if section == "results":
        data.setdefault("setup", {}).setdefault("versions", {}).update(incoming.get("setup", {}).get("versions", {}))
    report.save(store, data)
    return replaced


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="quality_cells.json and/or quality_peer.json from a device call")
    args = p.parse_args(argv)
    for path in args.files:
        incoming = json.loads(Path(path).read_text())
        store, section = (PEER, "results") if incoming.get("benchmark") == PEER or "results" in incoming \
            else (STORE, "cells")
        replaced = fold(store, incoming, section)
        print(f"{path}: {len(incoming.get(section, {}))} entries into {store}.json"
              + (f"; replaced (kept under superseded): {', '.join(replaced)}" if replaced else ""))
        render.render_one(store, plots=True)


if __name__ == "__main__":
    main()

"""Editing exported checkpoints in hostile tests."""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file


def drop_tensors(path: Path, drop) -> None:
    """Re-save the directory's model.safetensors without the tensors whose name ``drop`` accepts."""
    file = Path(path) / "model.safetensors"
    with safe_open(str(file), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    state = {k: v for k, v in load_file(str(file)).items() if not drop(k)}
    save_file(state, str(file), metadata=metadata)

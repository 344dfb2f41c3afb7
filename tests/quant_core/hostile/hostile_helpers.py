"""Small editors for tampering with checkpoint files in tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

PROMPT_IDS = torch.tensor([[1, 5, 9, 33, 7, 120, 250]])


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT_IDS).logits


def edit_config(path: Path, fn) -> None:
    """Apply ``fn`` (which edits in place; its result is ignored) to the parsed config.json of
    the directory ``path`` and write it back."""
    cfg_path = Path(path) / "config.json"
    config = json.loads(cfg_path.read_text())
    fn(config)
    cfg_path.write_text(json.dumps(config))


def rewrite_weights(path: Path, fn_tensors=None, fn_metadata=None, name: str = "model.safetensors") -> None:
    """Re-save the weights file with ``fn_tensors(state)`` / ``fn_metadata(meta)`` applied."""
    file = Path(path) / name
    with safe_open(str(file), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    state = load_file(str(file))
    if fn_tensors:  # each edits in place
        fn_tensors(state)
    if fn_metadata:
        fn_metadata(metadata)
    save_file({k: v.contiguous() for k, v in state.items()}, str(file), metadata=metadata)

"""Checksums that seal a quantllm checkpoint: every file it holds, config.json included.

``quantization_config.checksums`` maps each file's name to its SHA-256; the entry for
``config.json`` itself is the SHA-256 of the config's canonical JSON without that one entry,
so the quantization settings, the per-layer manifest and the model settings are covered as
much as the weights. Loading refuses a checkpoint whose checksums are missing (unless the
user says ``verify=False``), any file that changed, and any unlisted file the loader would
read. A checksum catches corruption and careless edits; it is not a signature.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import CheckpointError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Files a checkpoint directory of ours may hold (the tokenizer's vary with its kind).
CHECKPOINT_FILES = frozenset({
    CONFIG_FILE, "generation_config.json", WEIGHTS_FILE, "model.safetensors.index.json", "quantize_config.json",
    "quant_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json"})
NO_VERIFY_HINT = ("if you trust these files, load with verify=False (the CLI's --no-verify); otherwise "
                  "re-create the checkpoint with `quantllm quantize`")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in ``folder`` but config.json (which carries them)."""
    return {p.name: sha256(p) for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != CONFIG_FILE}


def config_digest(config: dict) -> str:
    """SHA-256 of ``config`` as canonical JSON, leaving out its own entry under checksums."""
    qc = dict(config.get("quantization_config") or {})
    sums = qc.get("checksums")
    if isinstance(sums, dict):
        qc["checksums"] = {k: v for k, v in sums.items() if k != CONFIG_FILE}
    canonical = json.dumps({**config, "quantization_config": qc}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal_config(folder: Path) -> dict:
    """Add config.json's own checksum to the config.json in ``folder``; returns the config."""
    path = Path(folder) / CONFIG_FILE
    config = json.loads(path.read_text())
    config["quantization_config"]["checksums"][CONFIG_FILE] = config_digest(config)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def verify_checksums(folder: Path, config: dict) -> None:
    """Raise CheckpointError unless every file of ``folder`` matches ``config``'s checksums."""
    folder = Path(folder)
    sums = (config.get("quantization_config") or {}).get("checksums")
    if not isinstance(sums, dict) or not {CONFIG_FILE, WEIGHTS_FILE} <= set(sums):
        raise CheckpointError(f"{folder} has no checksums for config.json and its weights (it was saved by an "
                              f"older quantllm, or they were removed); {NO_VERIFY_HINT}")
    if sums[CONFIG_FILE] != config_digest(config):
        raise CheckpointError(f"{folder / CONFIG_FILE} was modified after it was saved: its quantization settings, "
                              f"layer manifest or model settings no longer match its checksum; {NO_VERIFY_HINT}")
    for name, digest in sums.items():
        if name == CONFIG_FILE:
            continue
        path = folder / str(name)
        if os.path.basename(str(name)) != name or not path.is_file():
            raise CheckpointError(f"{path} is listed in the checksums but missing; the checkpoint is incomplete")
        if sha256(path) != digest:
            raise CheckpointError(f"{path} does not match the checksum in config.json: the file is truncated, "
                                  f"corrupt or was modified; {NO_VERIFY_HINT}")
    unlisted = sorted(n for n in os.listdir(folder) if n in CHECKPOINT_FILES and n not in sums)
    if unlisted:
        raise CheckpointError(f"{folder} holds {', '.join(unlisted)}, which the loader would read but the "
                              f"checksums do not cover (added after saving); remove them or re-save the checkpoint")

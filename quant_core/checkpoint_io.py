"""Checkpoint directories, written and read one way whatever their tensor layout.

A directory holds ``model.safetensors``, ``config.json`` (the model's config carrying the
format's ``quantization_config``), the generation config and the tokenizer. It is written
into a temporary directory beside the target and renamed into place only once complete.
Reading builds the model class with parameters on the meta device (no float weights are
allocated), lets the format put in its quantized layers, then assigns the tensors.

Each format keeps only its own mapping between tensors and layers: ours in
``serialization``, GPTQ and AWQ in ``interop``. This module imports nothing of the project
but ``errors``, so every format can build on it.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"


@contextlib.contextmanager
def atomic_directory(target: Path, overwrite: bool = False):
    """Yield a temporary directory beside ``target``; rename it into place only if the block succeeds."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; choose another path or pass overwrite=True")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{tmp.name[-8:]}")
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> dict | None:
    """The parsed file, or None where it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the checkpoint is corrupt") from exc


def read_quantization_config(path: Path) -> dict | None:
    """``quantization_config`` of the directory's config.json (None without one)."""
    return (read_json(Path(path) / "config.json") or {}).get("quantization_config")


def dedupe_tied(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Tied weights (lm_head = embed_tokens) are one tensor under two names; safetensors stores
    each storage once, so keep the first name (contiguous) and map the others to it as aliases."""
    kept, aliases, seen = {}, {}, {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            kept[name] = t.contiguous()
    return kept, aliases


def write_checkpoint(model, tokenizer, out, tensors: dict[str, torch.Tensor], quantization_config: dict, *,
                     overwrite: bool = True, metadata: dict[str, str] | None = None, checksum: bool = False,
                     extra_files: dict[str, dict] | None = None) -> dict:
    """Write ``tensors`` as model.safetensors (with ``metadata``), the model's config carrying
    ``quantization_config`` (plus the weights file's SHA-256 under ``checksums`` if ``checksum``),
    its generation config, the tokenizer and ``extra_files`` (name -> JSON), atomically.
    The model is not modified; returns the quantization_config as written."""
    with atomic_directory(Path(out), overwrite=overwrite) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt", **(metadata or {})})
        if checksum:
            quantization_config = {**quantization_config, "checksums": {WEIGHTS_FILE: sha256(tmp / WEIGHTS_FILE)}}
        config = copy.deepcopy(model.config)
        config.quantization_config = quantization_config
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, content in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(content, indent=2))
    return quantization_config


def build_skeleton(path: Path, dtype: torch.dtype | None = None, by_architecture: bool = False):
    """The model of ``path``'s config.json with parameters on the meta device (buffers such as
    rotary frequencies are real). ``by_architecture``: the class its ``architectures`` names (our
    own checkpoints, any task); otherwise the causal-LM class of its model type, in ``dtype``."""
    # transformers and accelerate are imported here, not at the top: together they take seconds
    # to import, and `import quant_core` (which reaches this module) should not pay that.
    import transformers
    from accelerate import init_empty_weights

    config = transformers.AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the format's loader builds the quantized layers itself
    with init_empty_weights():
        if by_architecture:
            return architecture_class(config)(config)
        return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)


def architecture_class(config):
    import transformers  # at call time, as in build_skeleton

    for arch in config.architectures or []:
        if hasattr(transformers, arch):
            return getattr(transformers, arch)
    raise CheckpointError(f"config.json names no transformers architecture this version knows "
                          f"({config.architectures}); upgrade transformers")


def finish_model(model, state: dict[str, torch.Tensor], source):
    """Assign ``state`` to ``model``'s skeleton (no copy), tie weights and check that nothing
    is left on the meta device (``source`` names the checkpoint in the error)."""
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    empty = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if empty:
        raise CheckpointError(f"{source} lacks tensors for: {', '.join(empty[:5])}"
                              + (f" (and {len(empty) - 5} more)" if len(empty) > 5 else ""))
    return model.eval()


def load_tokenizer(path: Path):
    """The tokenizer saved in the directory, or None where it holds none."""
    from transformers import AutoTokenizer  # at call time, as in build_skeleton

    path = Path(path)
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(path)
    return None

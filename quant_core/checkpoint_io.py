"""Checkpoint directories, written and read one way whatever their tensor layout.

A directory holds ``model.safetensors``, ``config.json`` (the model's config carrying the
format's ``quantization_config``), the generation config and the tokenizer. It is written
into a temporary directory beside the target and renamed into place only once complete.
Reading builds the model class with parameters on the meta device (no float weights are
allocated), lets the format put in its quantized layers, then assigns the tensors after
checking each against the skeleton (name, shape, kind of dtype). How a directory is replaced
safely: ``safe_write``; the checksums sealing our own checkpoints: ``checksums``.

Each format keeps only its own mapping between tensors and layers: ours in
``serialization``, GPTQ and AWQ in ``interop``. This module imports nothing of the project
but ``errors``, so every format can build on it.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import safe_write
from .checksums import CHECKPOINT_FILES, CONFIG_FILE, WEIGHTS_FILE, file_checksums, seal_config, sha256  # noqa: F401
from .errors import CheckpointError, OutputExistsError
from .file_headers import read_safetensors_header


EXPORT_REPLACEABLE = ("quantllm", "gptq", "awq")  # what an export with overwrite may replace


def atomic_directory(target: Path, overwrite: bool = False, replaceable: tuple[str, ...] = ("quantllm",)):
    """``safe_write.atomic_directory`` replacing only what ``check_output`` allows."""
    return safe_write.atomic_directory(Path(target), lambda t: check_output(t, overwrite, replaceable))


def read_json(path: Path):
    """The parsed file, or None where it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the checkpoint is corrupt") from None


def read_config_json(path: Path) -> dict | None:
    """The directory's config.json (None without one); CheckpointError unless it is a JSON object."""
    config = read_json(Path(path) / CONFIG_FILE)
    if config is not None and not isinstance(config, dict):
        raise CheckpointError(f"{Path(path) / CONFIG_FILE} holds a JSON {type(config).__name__}, not an object; "
                              f"the checkpoint is corrupt: restore config.json from where the model came from")
    return config


def read_quantization_config(path: Path) -> dict | None:
    """``quantization_config`` of the directory's config.json (None without one)."""
    qc = (read_config_json(path) or {}).get("quantization_config")
    if qc is not None and not isinstance(qc, dict):
        raise CheckpointError(f"quantization_config in {Path(path) / CONFIG_FILE} is not a JSON object; "
                              f"the checkpoint is corrupt")
    return qc


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
                     overwrite: bool = False, replaceable: tuple[str, ...] = ("quantllm",),
                     metadata: dict[str, str] | None = None, checksum: bool = False,
                     extra_files: dict[str, dict] | None = None) -> dict:
    """Write ``tensors`` as model.safetensors (with ``metadata``), the model's config carrying
    ``quantization_config``, its generation config, the tokenizer and ``extra_files`` (name ->
    JSON), atomically; ``overwrite`` replaces only what ``check_output`` allows. ``checksum``
    seals every file under ``quantization_config.checksums`` (see ``checksums``). The model is
    not modified; returns the quantization_config as written."""
    with atomic_directory(Path(out), overwrite=overwrite, replaceable=replaceable) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt", **(metadata or {})})
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, content in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(content, indent=2))
        if checksum:
            quantization_config = {**quantization_config, "checksums": file_checksums(tmp)}
        config = copy.deepcopy(model.config)
        config.quantization_config = quantization_config
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        if checksum:
            quantization_config = seal_config(tmp)["quantization_config"]
    return quantization_config


def checkpoint_kind(path: Path) -> str | None:
    """"quantllm" for a quantllm checkpoint; "gptq" or "awq" for one that quantllm exported
    (its weights say ``producer: quantllm``, or GPTQ's ``meta.quantizer`` names quantllm); else None."""
    try:
        qc = read_quantization_config(path)
    except CheckpointError:
        return None
    method = str(qc.get("quant_method", "")).lower() if isinstance(qc, dict) else ""
    if method not in ("gptq", "awq"):
        return "quantllm" if method == "quantllm" else None
    meta = qc.get("meta") if isinstance(qc.get("meta"), dict) else {}
    try:
        producer = read_safetensors_header(Path(path) / WEIGHTS_FILE)[1].get("producer")
    except CheckpointError:
        producer = None
    return method if producer == "quantllm" or "quantllm" in str(meta.get("quantizer", "")) else None


def check_output(target: Path, overwrite: bool, replaceable: tuple[str, ...] = ("quantllm",)) -> None:
    """Refuse, before any work, an output directory that exists without ``overwrite``, or one
    ``overwrite`` must not replace: anything but an empty folder or a checkpoint of a kind in
    ``replaceable`` (see ``checkpoint_kind``) that holds only files a checkpoint holds."""
    target = Path(target)
    if not (target.exists() or target.is_symlink()):
        return
    kinds = " or ".join(replaceable)
    if not overwrite:
        raise OutputExistsError(f"{target} exists; pass --overwrite (overwrite=True) to replace it "
                                f"(only an empty folder or a {kinds} checkpoint written by quantllm is replaced)")
    if target.is_symlink() or not target.is_dir():
        raise OutputExistsError(f"refusing to replace {target}: it is {'a link' if target.is_symlink() else 'a file'}"
                                f", not a checkpoint folder: remove it yourself or choose another output")
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return
    kind = checkpoint_kind(target)
    foreign = [n for n in entries if n not in CHECKPOINT_FILES or not (target / n).is_file()
               or (target / n).is_symlink()]
    if kind in replaceable and not foreign:
        return
    shown = foreign or entries
    listing = ", ".join(shown[:6]) + (" ..." if len(shown) > 6 else "")
    what = (f"it holds what no checkpoint holds ({listing})" if kind in replaceable else
            f"it is not a {kinds} checkpoint written by quantllm (it holds {listing})")
    raise OutputExistsError(f"refusing to replace {target}: {what}; --overwrite replaces only an empty folder "
                            f"or such a checkpoint: move its contents away or choose another output")


def build_skeleton(path: Path, dtype: torch.dtype | None = None, by_architecture: bool = False):
    """The model of ``path``'s config.json with parameters on the meta device (buffers such as
    rotary frequencies are real). ``by_architecture``: the class its ``architectures`` names (our
    own checkpoints, any task); otherwise the causal-LM class of its model type, in ``dtype``."""
    # transformers and accelerate are imported here, not at the top: together they take seconds
    # to import, and `import quant_core` (which reaches this module) should not pay that.
    import transformers
    from accelerate import init_empty_weights

    read_config_json(path)  # a clear error for a config.json that is not an object
    try:  # config.json is user input: any failure to build from it is a corrupt checkpoint
        config = transformers.AutoConfig.from_pretrained(path)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the format's loader builds the quantized layers itself
        cls = architecture_class(config) if by_architecture else None
        with init_empty_weights():
            if cls is not None:
                return cls(config)
            return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot build the model {Path(path) / CONFIG_FILE} describes: "
                              f"{type(exc).__name__}: {exc}; the config is corrupt or needs a newer transformers") from exc


def architecture_class(config):
    import transformers  # at call time, as in build_skeleton

    """The transformers model class ``config.architectures`` names: only a ``PreTrainedModel``
    subclass, never any other attribute of the module (``"pipeline"`` is a function)."""
    names = config.architectures
    if not isinstance(names, list) or not all(isinstance(a, str) for a in names):
        raise CheckpointError(f"architectures in config.json must be a list of class names, not {names!r}")
    for arch in names:
        cls = getattr(transformers, arch, None) if arch.isidentifier() else None
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    raise CheckpointError(f"config.json names no transformers model class this version knows "
                          f"({names}); upgrade transformers, or restore config.json if it was edited")


def finish_model(model, state: dict[str, torch.Tensor], source):
    """Assign ``state`` to ``model``'s skeleton (no copy) after checking each tensor's name,
    shape and kind of dtype against it, tie weights and check that nothing is left on the
    meta device (``source`` names the checkpoint in the errors)."""
    check_state(model, state, source)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    empty = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if empty:
        raise CheckpointError(f"{source} lacks tensors for: {', '.join(empty[:5])}"
                              + (f" (and {len(empty) - 5} more)" if len(empty) > 5 else ""))
    return model.eval()


def check_state(model, state: dict[str, torch.Tensor], source) -> None:
    """CheckpointError for a tensor the skeleton has no place for, or of another shape, or a
    float where the skeleton holds an integer (or the reverse)."""
    expected = model.state_dict(keep_vars=True)
    problems = []
    for name, t in state.items():
        slot = expected.get(name)
        if slot is None:
            problems.append(f"{name} is not a tensor of this model")
        elif tuple(t.shape) != tuple(slot.shape):
            problems.append(f"{name} has shape {tuple(t.shape)}, the model needs {tuple(slot.shape)}")
        elif t.is_floating_point() != slot.is_floating_point():
            problems.append(f"{name} is {t.dtype}, the model needs {slot.dtype}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model its config.json describes: " + "; ".join(problems[:5])
                              + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))


def load_tokenizer(path: Path):
    """The tokenizer saved in the directory, or None where it holds none."""
    from transformers import AutoTokenizer  # at call time, as in build_skeleton

    path = Path(path)
    if not ((path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()):
        return None
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 (tokenizer files are user input; any failure means they are broken)
        raise CheckpointError(f"the tokenizer in {path} cannot be loaded ({type(exc).__name__}: {exc}); restore "
                              f"its tokenizer files from where the model came from") from exc

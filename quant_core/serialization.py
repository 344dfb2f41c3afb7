"""Save a quantized model once, reload it packed: safetensors + config.json, never pickle.

A saved directory holds ``model.safetensors`` (packed tensors of quantized layers, float
tensors of the rest), ``config.json`` whose ``quantization_config`` carries the
QuantConfig, a manifest of quantized layers and the file's SHA-256, and the tokenizer.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .checkpoint_io import (WEIGHTS_FILE, build_skeleton, dedupe_tied, finish_model, load_tokenizer,
                            read_quantization_config, sha256, write_checkpoint)
from .config import QuantConfig
from .errors import CheckpointError
from .modules import QuantLinear
from .packed import expected_shapes


def layer_manifest(model: torch.nn.Module) -> dict[str, dict]:
    return {name: {"in_features": m.in_features, "out_features": m.out_features,
                   "weight_dtype": m.weight_dtype, "group_size": m.group_size,
                   "zero_mode": m.packed.zero_mode, "g_idx": m.g_idx is not None,
                   "bias": m.bias is not None}
            for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def save_quantized(model, tokenizer, path, overwrite: bool = False) -> Path:
    """Write ``model`` (quantized by ``quant_core.quantize``) and ``tokenizer`` to ``path`` atomically."""
    qc = getattr(model.config, "quantization_config", None)
    layers = layer_manifest(model)
    if not isinstance(qc, dict) or qc.get("quant_method") != "quantllm" or not layers:
        raise ValueError("model is not quantized by quantllm: call quant_core.quantize(model, config) first")
    path = Path(path)
    tensors, aliases = dedupe_tied(model.state_dict())
    written = write_checkpoint(model, tokenizer, path, tensors, {**qc, "layers": layers}, overwrite=overwrite,
                               metadata={"producer": "quantllm", "aliases": json.dumps(aliases)}, checksum=True)
    model.config.quantization_config = written  # the model describes what was saved
    model.config.architectures = [type(model).__name__]
    return path


def _check_file(path: Path, qc: dict) -> dict[str, tuple]:
    """Checksum and header of the weights file; returns tensor name -> shape."""
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; the checkpoint is incomplete")
    expected = qc.get("checksums", {}).get(WEIGHTS_FILE)
    if expected and sha256(weights) != expected:
        raise CheckpointError(f"{weights} does not match the checksum in config.json: the file is truncated, "
                              f"corrupt or was modified; re-create it with `quantllm quantize`")
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({exc})") from exc


def _check_layers(layers: dict, shapes: dict) -> None:
    problems = []
    for name, spec in layers.items():
        want = expected_shapes(spec["weight_dtype"], spec["in_features"], spec["out_features"],
                               spec["group_size"], spec["zero_mode"] != "none", spec["g_idx"])
        for tensor, shape in want.items():
            key = f"{name}.{tensor}"
            if key not in shapes:
                problems.append(f"{key} is missing")
            elif shapes[key] != shape:
                problems.append(f"{key} has shape {shapes[key]} but the config says {shape}")
    if problems:
        raise CheckpointError("checkpoint tensors disagree with its quantization_config: " + "; ".join(problems[:5])
                              + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))


def load_quantized(path, device="cpu", compute_dtype: str | None = None, kernel: str | None = None):
    """Rebuild a model saved by ``save_quantized`` with packed tensors only; returns (model, tokenizer)."""
    path = Path(path)
    qc = read_quantization_config(path)
    if not qc or qc.get("quant_method") != "quantllm":
        raise CheckpointError(f"{path} has no quantllm quantization_config in config.json")
    config = QuantConfig.from_dict(qc)
    if compute_dtype or kernel:
        config = config.model_copy(update={k: v for k, v in
                                           (("compute_dtype", compute_dtype), ("kernel", kernel)) if v})
    layers = qc.get("layers") or {}
    shapes = _check_file(path, qc)
    _check_layers(layers, shapes)

    model = build_skeleton(path, by_architecture=True)
    for name, spec in layers.items():
        _swap_in_skeleton(model, name, spec, config)
    state = load_file(str(path / WEIGHTS_FILE), device="cpu")
    for alias, name in _aliases(path).items():
        if name in state:
            state[alias] = state[name]
    finish_model(model, state, path / WEIGHTS_FILE)
    model.config.quantization_config = qc
    return model.to(device).eval(), load_tokenizer(path)


def _aliases(path: Path) -> dict:
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("aliases", "{}"))


def _swap_in_skeleton(model, name: str, spec: dict, config: QuantConfig) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, QuantLinear(
        spec["in_features"], spec["out_features"], spec["weight_dtype"], spec["group_size"],
        sym=spec["zero_mode"] == "none", bias=spec["bias"], compute_dtype=config.compute_dtype,
        has_g_idx=spec["g_idx"], scale_dtype=config.torch_scale_dtype, kernel=config.kernel,
        device="meta", zero_mode=spec["zero_mode"]))

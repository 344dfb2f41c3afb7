"""Save a quantized model once, reload it packed: safetensors + config.json, never pickle.

A saved directory holds ``model.safetensors`` (packed tensors of quantized layers, float
tensors of the rest), ``config.json`` whose ``quantization_config`` carries the
QuantConfig, a manifest of quantized layers and the checksums of every file (``checksums``),
and the tokenizer. Loading checks, before building anything: the checksums (required unless
``verify=False``), the config and manifest, every tensor's header dtype and shape against the
manifest, the aliases, and finally every value that indexes memory.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .checkpoint_io import (WEIGHTS_FILE, build_skeleton, dedupe_tied, finish_model, load_tokenizer,
                            read_config_json, write_checkpoint)
from .checksums import verify_checksums
from .config import CONFIG_VERSION, SCALE_DTYPES, QuantConfig
from .errors import CheckpointError
from .file_headers import read_safetensors_header
from .formats import get_format
from .modules import QuantLinear
from .outliers import STRUCTURES, expected_outlier_shapes
from .output_head import QuantEmbedding, embedding_source
from .packed import expected_shapes

MANIFEST_FIELDS = {"in_features": int, "out_features": int, "weight_dtype": str, "group_size": int,
                   "zero_mode": str, "g_idx": bool, "bias": bool}
# present only where a layer's scales are double-quantized (quant_core.double_quant): groups per
# second-level scale; the layer then stores scale_codes / scale_absmax / scale_offset instead of scales
OPTIONAL_MANIFEST_FIELDS = {"double_quant_block": int}
ZERO_MODES = ("none", "int", "min")
HEADER_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int16: "I16",
                 torch.int32: "I32"}
FLOAT_HEADER_DTYPES = ("F16", "BF16", "F32", "F64")


def layer_manifest(model: torch.nn.Module) -> dict[str, dict]:
    """One entry per quantized layer; ``outliers`` ({structure, count}) only where it has them,
    so checkpoints without outliers read exactly as before."""
    return {name: {"in_features": m.in_features, "out_features": m.out_features,
                   "weight_dtype": m.weight_dtype, "group_size": m.group_size,
                   "zero_mode": m.packed.zero_mode, "g_idx": m.g_idx is not None,
                   "bias": m.bias is not None, **_outlier_entry(m),
                   **({} if m.double_quant_block is None else {"double_quant_block": m.double_quant_block})}
            for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def _outlier_entry(m: QuantLinear) -> dict:
    outliers = m.outliers
    return {} if outliers is None else {"outliers": {"structure": outliers.structure, "count": outliers.count}}


def save_quantized(model, tokenizer, path, overwrite: bool = False) -> Path:
    """Write ``model`` (quantized by ``quant_core.quantize``) and ``tokenizer`` to ``path`` atomically;
    ``overwrite`` replaces only an empty folder or another quantllm checkpoint."""
    qc = getattr(model.config, "quantization_config", None)
    layers = layer_manifest(model)
    if not isinstance(qc, dict) or qc.get("quant_method") != "quantllm" or not layers:
        raise ValueError("model is not quantized by quantllm: call quant_core.quantize(model, config) first")
    path = Path(path)
    tensors, aliases = dedupe_tied(model.state_dict())
    qc = {k: v for k, v in qc.items() if k not in ("checksums", "input_embedding")}  # a reloaded model's own
    source = embedding_source(model)  # a tied embedding reading the packed head has no tensors of its own
    qc = {**qc, "layers": layers, **({"input_embedding": source} if source else {})}
    written = write_checkpoint(model, tokenizer, path, tensors, qc, overwrite=overwrite,
                               replaceable=("quantllm",), checksum=True,
                               metadata={"producer": "quantllm", "aliases": json.dumps(aliases)})
    model.config.quantization_config = written  # the model describes what was saved
    model.config.architectures = [type(model).__name__]
    return path


def _quant_config(qc: dict, path: Path) -> QuantConfig:
    version = qc.get("version", CONFIG_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"quantization_config version in {path / 'config.json'} is {version!r}, not an "
                              f"integer; the checkpoint is corrupt: re-create it with `quantllm quantize`")
    try:
        return QuantConfig.from_dict(qc)
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        raise CheckpointError(f"quantization_config in {path / 'config.json'} is invalid: {exc}") from None


def _manifest_problems(name, spec) -> list[str]:
    if not isinstance(spec, dict):
        return [f"{name}: not an object"]
    out = [f"{name}: {key} is missing" for key in MANIFEST_FIELDS if key not in spec]
    out += [f"{name}: {key} is {spec[key]!r}, not {kind.__name__}" for key, kind in MANIFEST_FIELDS.items()
            if key in spec and (not isinstance(spec[key], kind) or (kind is int and isinstance(spec[key], bool)))]
    out += [f"{name}: {key} is {spec[key]!r}, not a positive {kind.__name__}"
            for key, kind in OPTIONAL_MANIFEST_FIELDS.items() if key in spec
            and (not isinstance(spec[key], kind) or isinstance(spec[key], bool) or spec[key] <= 0)]
    if out:
        return out
    if spec["in_features"] <= 0 or spec["out_features"] <= 0 or not (spec["group_size"] == -1 or spec["group_size"] > 0):
        out.append(f"{name}: features or group_size out of range")
    if spec["zero_mode"] not in ZERO_MODES:
        out.append(f"{name}: zero_mode {spec['zero_mode']!r} is not one of {ZERO_MODES}")
    out += _outlier_problems(name, spec.get("outliers"))
    try:
        if get_format(spec["weight_dtype"]).is_codebook and spec["zero_mode"] != "none":
            out.append(f"{name}: {spec['weight_dtype']} is a codebook format and has no zero points")
    except ValueError as exc:
        out.append(f"{name}: {exc}")
    return out


def _outlier_problems(name, outliers) -> list[str]:
    if outliers is None:
        return []
    if not isinstance(outliers, dict) or set(outliers) != {"structure", "count"}:
        return [f"{name}: outliers is not {{structure, count}}"]
    count = outliers["count"]
    if outliers["structure"] not in STRUCTURES:
        return [f"{name}: outlier structure {outliers['structure']!r} is not one of {STRUCTURES}"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return [f"{name}: outlier count {count!r} is not a non-negative integer"]
    return []


def check_manifest(layers, path: Path) -> dict:
    """The layer manifest, every entry complete and in range, or CheckpointError."""
    if not isinstance(layers, dict) or not layers:
        raise CheckpointError(f"{path / 'config.json'} has no layer manifest (quantization_config.layers); "
                              f"the checkpoint is corrupt: re-create it with `quantllm quantize`")
    problems = [p for name, spec in layers.items() for p in _manifest_problems(name, spec)]
    if problems:
        raise CheckpointError(f"the layer manifest in {path / 'config.json'} is malformed: " + "; ".join(problems[:5]))
    return layers


def _expected_tensors(spec: dict, config: QuantConfig) -> dict[str, tuple[str, tuple]]:
    """Header dtype and shape of each tensor a manifest entry promises."""
    shapes = expected_shapes(spec["weight_dtype"], spec["in_features"], spec["out_features"],
                             spec["group_size"], spec["zero_mode"] != "none", spec["g_idx"],
                             spec.get("double_quant_block"))
    scale = HEADER_DTYPES[SCALE_DTYPES[config.scale_dtype]]
    dtypes = {"qweight": "U8", "scales": scale, "zeros": scale if spec["zero_mode"] == "min" else "U8", "g_idx": "I32",
              "scale_codes": "I8", "scale_absmax": "F32", "scale_offset": "F32"}
    out = {t: (dtypes[t], shape) for t, shape in shapes.items()}
    if spec.get("outliers"):
        o = spec["outliers"]
        out.update({t: (HEADER_DTYPES[dtype], shape) for t, (dtype, shape) in expected_outlier_shapes(
            o["structure"], spec["out_features"], spec["in_features"], o["count"]).items()})
    if spec["bias"]:
        out["bias"] = (FLOAT_HEADER_DTYPES, (spec["out_features"],))
    return out


def check_layers(layers: dict, header: dict[str, tuple], config: QuantConfig) -> None:
    """Every tensor the manifest promises is in the weights file with its dtype and shape."""
    problems = []
    for name, spec in layers.items():
        for tensor, (dtype, shape) in _expected_tensors(spec, config).items():
            key = f"{name}.{tensor}"
            if key not in header:
                problems.append(f"{key} is missing")
            elif header[key][1] != shape:
                problems.append(f"{key} has shape {header[key][1]} but the config says {shape}")
            elif header[key][0] not in (dtype if isinstance(dtype, tuple) else (dtype,)):
                problems.append(f"{key} is stored as {header[key][0]} but the config says {dtype}")
    if problems:
        raise CheckpointError("checkpoint tensors disagree with its quantization_config: " + "; ".join(problems[:5])
                              + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))


def load_quantized(path, device="cpu", compute_dtype: str | None = None, kernel: str | None = None,
                   verify: bool = True):
    """Rebuild a model saved by ``save_quantized`` with packed tensors only; returns (model, tokenizer).
    ``verify=False`` skips the checksums (every structural check still runs)."""
    path = Path(path)
    raw = read_config_json(path)
    qc = (raw or {}).get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != "quantllm":
        raise CheckpointError(f"{path} has no quantllm quantization_config in config.json")
    if not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path / WEIGHTS_FILE} is missing; the checkpoint is incomplete")
    if verify:
        verify_checksums(path, raw)
    config = _quant_config(qc, path)
    if compute_dtype or kernel:
        config = config.model_copy(update={k: v for k, v in
                                           (("compute_dtype", compute_dtype), ("kernel", kernel)) if v})
    layers = check_manifest(qc.get("layers"), path)
    header, metadata = read_safetensors_header(path / WEIGHTS_FILE)
    check_layers(layers, header, config)

    model = build_skeleton(path, by_architecture=True)
    for name, spec in layers.items():
        _swap_in_skeleton(model, name, spec, config)
    if qc.get("input_embedding") is not None:
        _embedding_from_layer(model, qc["input_embedding"], layers, path)
    state = _read_state(path / WEIGHTS_FILE)
    _add_aliases(state, metadata, path)
    finish_model(model, state, path / WEIGHTS_FILE)
    _check_values(model, path)
    model.config.quantization_config = qc
    return model.to(device).eval(), load_tokenizer(path)


def _read_state(weights: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({exc})") from None


def _add_aliases(state: dict, metadata: dict, path: Path) -> None:
    """Tied tensors are stored once; ``aliases`` (alias -> stored name) may only name tensors
    that exist, and never replace one that is stored."""
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
    except ValueError:
        aliases = None
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise CheckpointError(f"the aliases metadata of {path / WEIGHTS_FILE} is not a map of tensor names")
    for alias, name in aliases.items():
        if alias in state:
            raise CheckpointError(f"alias {alias!r} in {path / WEIGHTS_FILE} would replace a stored tensor")
        if name not in state:
            raise CheckpointError(f"alias {alias!r} in {path / WEIGHTS_FILE} points at {name!r}, which is not stored")
    for alias, name in aliases.items():
        state[alias] = state[name]


def _swap_in_skeleton(model, name: str, spec: dict, config: QuantConfig) -> None:
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
    except AttributeError:
        old = None
    if not isinstance(old, nn.Linear) or (old.in_features, old.out_features) != (spec["in_features"], spec["out_features"]):
        raise CheckpointError(f"the manifest's layer {name} ({spec['in_features']} -> {spec['out_features']}) is not "
                              f"a linear layer of that size in the model config.json describes")
    setattr(parent, child, QuantLinear(
        spec["in_features"], spec["out_features"], spec["weight_dtype"], spec["group_size"],
        sym=spec["zero_mode"] == "none", bias=spec["bias"], compute_dtype=config.compute_dtype,
        has_g_idx=spec["g_idx"], scale_dtype=config.torch_scale_dtype, kernel=config.kernel,
        device="meta", zero_mode=spec["zero_mode"], outliers=spec.get("outliers"),
        double_quant_block=spec.get("double_quant_block")))


def _embedding_from_layer(model, source, layers: dict, path: Path) -> None:
    """The input embedding reads the rows of quantized layer ``source`` (a tied, quantized head)."""
    embed = model.get_input_embeddings()
    spec = layers.get(source) if isinstance(source, str) else None
    if spec is None or not isinstance(embed, nn.Embedding) or \
            (embed.num_embeddings, embed.embedding_dim) != (spec["out_features"], spec["in_features"]):
        raise CheckpointError(f"quantization_config.input_embedding in {path / 'config.json'} is {source!r}, not a "
                              f"quantized layer of the embedding's shape; the checkpoint is corrupt: re-create it")
    if model.get_output_embeddings() is not model.get_submodule(source):
        raise CheckpointError(f"quantization_config.input_embedding in {path / 'config.json'} names {source!r}, "
                              f"which is not the model's output head; the checkpoint is corrupt: re-create it")
    model.set_input_embeddings(QuantEmbedding(model, embed.weight.dtype, embed.padding_idx))


def _check_values(model, path: Path) -> None:
    """Group indices and zero-point codes are read as memory offsets by kernels: check their range."""
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            problems = m.packed.problems()
            if problems:
                raise CheckpointError(f"layer {name} in {path / WEIGHTS_FILE} is corrupt: " + "; ".join(problems))

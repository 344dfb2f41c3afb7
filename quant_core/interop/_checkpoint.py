"""Helpers the GPTQ, AWQ and GGUF importers/exporters share: int32 bit streams, reading a
safetensors checkpoint directory into quantllm layers (``load_checkpoint``, given the
format's per-layer converter; the skeleton and the writer are ``checkpoint_io``'s), and the
tensors an exporter starts from.

GPTQ and AWQ both pack codes into int32 words as a little-endian bit stream (code ``i``
of a word at bit ``i * bits``; GPTQ's 3-bit layout lets codes straddle words, which a
continuous stream also describes). Our packed layout (``formats.pack_codes``) is the
same stream cut into bytes, so on a little-endian host packing is a byte reinterpretation.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..checkpoint_io import build_skeleton, dedupe_tied, finish_model, load_tokenizer, read_json
from ..config import QuantConfig
from ..errors import CheckpointError, ExportError
from ..file_headers import read_safetensors_header
from ..formats import pack_codes, unpack_codes
from ..modules import QuantLinear
from ..packed import PackedWeight
from ..model_surgery import mark_quantized, replace_linear
from ..output_head import embedding_source

if sys.byteorder != "little":  # the int32 <-> byte views below assume it
    raise ImportError("quant_core.interop needs a little-endian host")


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes ``[R, C]`` -> int32 ``[R, C * bits / 32]`` (codes as one bit stream per row)."""
    if codes.shape[1] * bits % 32:
        raise ValueError(f"{codes.shape[1]} codes of {bits} bits do not fill whole int32 words; "
                         f"the dimension must be a multiple of {32 // _gcd(bits, 32)}")
    packed = pack_codes(codes, bits)
    # via a flat view: a size-1 dimension may carry a stride that .view(int32) rejects
    return packed.reshape(-1).view(torch.int32).reshape(packed.shape[0], -1)


def unpack_int32(words: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of ``pack_int32``: int32 ``[R, W]`` -> uint8 codes ``[R, count]``."""
    as_bytes = words.contiguous().reshape(-1).view(torch.uint8).reshape(words.shape[0], -1)
    return unpack_codes(as_bytes, bits, count)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or sharded with an index)."""
    index = read_json(path / "model.safetensors.index.json")
    if index is not None:
        names = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(names, dict) or not all(isinstance(f, str) and "/" not in f for f in names.values()):
            raise CheckpointError(f"{path / 'model.safetensors.index.json'} has no valid weight_map")
        return [path / f for f in sorted(set(names.values()))]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path} has no .safetensors weights (pickled .bin checkpoints are not "
                              f"loaded, for safety: convert them to safetensors first)")
    return files


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's weight files, each file's header checked first."""
    tensors: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        if not f.is_file():
            raise CheckpointError(f"{f} is missing; the checkpoint is incomplete")
        read_safetensors_header(f)  # truncated or corrupt: one clear error
        try:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():
                    if key in tensors:
                        raise CheckpointError(f"tensor {key} is stored twice in {path}")
                    tensors[key] = handle.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{f} is not a readable safetensors file ({exc})") from None
    return tensors


def check_tensor(what: str, name: str, tensors: dict, shape: tuple, kinds: tuple[torch.dtype, ...] | str) -> torch.Tensor:
    """Pop ``name``; CheckpointError unless it exists with ``shape`` and a dtype in ``kinds``
    ("float": any floating dtype). ``what`` names the format and its config in the message."""
    t = tensors.pop(name, None)
    if t is None:
        raise CheckpointError(f"{what}: tensor {name} is missing")
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{what}: {name} has shape {tuple(t.shape)} but the config and model need {tuple(shape)}; "
                              f"the config (bits, group_size) does not describe these tensors")
    if not (t.is_floating_point() if kinds == "float" else t.dtype in kinds):
        raise CheckpointError(f"{what}: {name} is {t.dtype}, expected {kinds}")
    return t


def config_int(qc: dict, keys: tuple[str, ...], default, what: str) -> int:
    """The first of ``keys`` in ``qc`` as an int (bools and strings refused), else ``default``."""
    value = next((qc[k] for k in keys if k in qc), default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"{what}: {keys[0]} is {value!r}, not an integer; the config is corrupt")
    return value


def imported_config(packed: PackedWeight, compute_dtype: str, previous: QuantConfig | None) -> QuantConfig:
    """The QuantConfig describing imported layers (asym if any layer is)."""
    scheme = "asym" if (packed.zero_mode != "none" or (previous is not None and not previous.sym)) else "sym"
    scale_dtype = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(packed.scales.dtype)
    if scale_dtype is None:
        raise ValueError(f"scales of dtype {packed.scales.dtype} are not supported (fp16, bf16, fp32 are)")
    return QuantConfig(weight_dtype=packed.fmt.name, group_size=packed.group_size, scheme=scheme,
                       scale_dtype=scale_dtype, compute_dtype=compute_dtype, modules_to_not_convert=["lm_head"],
                       head_weight_dtype=None)  # an imported head that is not packed stays float


def skeleton_linear(model, prefix: str, what: str) -> nn.Linear:
    try:
        module = model.get_submodule(prefix)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        raise CheckpointError(f"{what}: {prefix}.qweight names no linear layer of the model config.json describes")
    return module


def load_checkpoint(path: Path, what: str, layer_from: Callable[[str, dict[str, torch.Tensor], int, int], PackedWeight],
                    dtype: torch.dtype, device, compute_dtype: str,
                    after_layers: Callable[[], None] | None = None):
    """Load the checkpoint directory ``path`` into quantllm layers; returns (model, tokenizer).

    Every ``prefix.qweight`` marks a quantized linear: ``layer_from(prefix, tensors, in_features,
    out_features)`` (the sizes are the model's, from config.json) checks and pops that layer's
    tensors (format ``what``, named in errors) and returns its PackedWeight; ``prefix.bias`` and
    the remaining float tensors are checked against the model and loaded as they are.
    ``after_layers()`` judges all layers together (each checked by ``layer_from``) before the
    model is finished."""
    tensors = read_tensors(path)
    model = build_skeleton(path, dtype)
    prefixes = [k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")]
    if not prefixes:
        raise CheckpointError(f"{path} says it is {what} but has no '.qweight' tensors")
    config = None
    for prefix in prefixes:
        linear = skeleton_linear(model, prefix, what)
        packed = layer_from(prefix, tensors, linear.in_features, linear.out_features)
        bias = tensors.pop(f"{prefix}.bias", None)
        if bias is not None and not bias.is_floating_point():
            raise CheckpointError(f"{what}: {prefix}.bias is {bias.dtype}, not a float tensor")
        try:
            config = imported_config(packed, compute_dtype, config)
        except ValueError as exc:  # a group size or scale dtype our config cannot express
            raise CheckpointError(f"{what}: layer {prefix} cannot be imported: {exc}") from None
        replace_linear(model, prefix, packed, None if bias is None else bias.to(dtype), config)
    if after_layers is not None:
        after_layers()
    rest = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    model = finish_model(model, rest, path)
    mark_quantized(model, config)
    return model.to(device), load_tokenizer(path)


def float_state(model) -> dict[str, torch.Tensor]:
    """State of every non-quantized tensor (QuantLinear buffers excluded), contiguous,
    with tied tensors stored once (tie_word_embeddings restores the alias on load); a head packed
    by head_weight_dtype (and an embedding reading its rows) as dequantized float weights."""
    skip = {f"{name}.{b}" for name, m in model.named_modules() if isinstance(m, QuantLinear)
            for b in QuantLinear.TENSOR_NAMES}  # packed tensors, scale codes and outliers included
    state = dedupe_tied({k: v for k, v in model.state_dict().items() if k not in skip})[0]
    return {**state, **_float_head(model)}


def quantized_layers(model) -> dict[str, PackedWeight]:
    """Module name -> PackedWeight of every quantized layer an export packs; ExportError for a float model.
    A head packed by head_weight_dtype is left out: float_state writes it as float."""
    head = _separate_head(model)
    layers = {name: m.packed for name, m in model.named_modules() if isinstance(m, QuantLinear) and name != head}
    if not layers:
        raise ExportError("the model has no quantized layers: quantize it (quantllm quantize) before exporting")
    with_outliers = [name for name, packed in layers.items() if packed.outliers is not None]
    if with_outliers:
        raise ExportError(f"{len(with_outliers)} layers (e.g. {with_outliers[0]}) keep sparse fp16 outliers, which "
                          f"GPTQ, AWQ and GGUF files cannot hold: quantize with outlier_fraction=0 to export, "
                          f"or keep the quantllm checkpoint")
    return layers


def _separate_head(model) -> str | None:
    """Name of the output head when head_weight_dtype packed it apart from the main format. GPTQ and AWQ
    checkpoints hold one format for every layer and GGUF has no per-row int8, so exports write it (and a
    tied embedding reading its rows) dequantized: the exported model computes the same logits."""
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(qc, dict) or not qc.get("head_weight_dtype") or not isinstance(head, QuantLinear):
        return None
    name = next(n for n, m in model.named_modules() if m is head)
    return name if QuantConfig.from_dict(dict(qc)).skips(name) else None


def _float_head(model) -> dict[str, torch.Tensor]:
    name = _separate_head(model)
    if name is None:
        return {}
    head, embed = model.get_submodule(name), model.get_input_embeddings()
    dtype = embed.dtype if embedding_source(model) == name else embed.weight.dtype
    out = {f"{name}.weight": head.packed.dequantize(dtype).contiguous()}
    if head.bias is not None:
        out[f"{name}.bias"] = head.bias.detach().contiguous()
    if embedding_source(model) == name:  # its own copy: the exported config does not tie them
        embed_name = next(n for n, m in model.named_modules() if m is embed)
        out[f"{embed_name}.weight"] = out[f"{name}.weight"].clone()
    return out

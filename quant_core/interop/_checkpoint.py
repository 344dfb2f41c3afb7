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
from safetensors import safe_open

from ..checkpoint_io import build_skeleton, dedupe_tied, finish_model, load_tokenizer, read_json
from ..config import QuantConfig
from ..errors import ExportError
from ..formats import pack_codes, unpack_codes
from ..modules import QuantLinear
from ..packed import PackedWeight
from ..quantize import mark_quantized, replace_linear

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
        return [path / f for f in sorted(set(index["weight_map"].values()))]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no .safetensors weights (pickled .bin checkpoints are not "
                                f"loaded, for safety: convert them to safetensors first)")
    return files


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    return tensors


def imported_config(packed: PackedWeight, compute_dtype: str, previous: QuantConfig | None) -> QuantConfig:
    """The QuantConfig describing imported layers (asym if any layer is)."""
    scheme = "asym" if (packed.zero_mode != "none" or (previous is not None and not previous.sym)) else "sym"
    scale_dtype = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[packed.scales.dtype]
    return QuantConfig(weight_dtype=packed.fmt.name, group_size=packed.group_size, scheme=scheme,
                       scale_dtype=scale_dtype, compute_dtype=compute_dtype, modules_to_not_convert=["lm_head"])


def load_checkpoint(path: Path, what: str, layer_from: Callable[[str, dict[str, torch.Tensor]], PackedWeight],
                    dtype: torch.dtype, device, compute_dtype: str):
    """Load the checkpoint directory ``path`` into quantllm layers; returns (model, tokenizer).

    Every ``prefix.qweight`` marks a quantized linear: ``layer_from(prefix, tensors)`` pops
    that layer's tensors (format ``what``, named in errors) and returns its PackedWeight;
    ``prefix.bias`` and the remaining float tensors are loaded as they are."""
    tensors = read_tensors(path)
    model = build_skeleton(path, dtype)
    prefixes = [k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")]
    if not prefixes:
        raise ValueError(f"{path} says it is {what} but has no '.qweight' tensors")
    config = None
    for prefix in prefixes:
        packed = layer_from(prefix, tensors)
        bias = tensors.pop(f"{prefix}.bias", None)
        config = imported_config(packed, compute_dtype, config)
        replace_linear(model, prefix, packed, None if bias is None else bias.to(dtype), config)
    rest = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    model = finish_model(model, rest, path)
    mark_quantized(model, config)
    return model.to(device), load_tokenizer(path)


def float_state(model) -> dict[str, torch.Tensor]:
    """State of every non-quantized tensor (QuantLinear buffers excluded), contiguous,
    with tied tensors stored once (tie_word_embeddings restores the alias on load)."""
    skip = {f"{name}.{b}" for name, m in model.named_modules() if isinstance(m, QuantLinear)
            for b in ("qweight", "scales", "zeros", "g_idx")}
    return dedupe_tied({k: v for k, v in model.state_dict().items() if k not in skip})[0]


def quantized_layers(model) -> dict[str, PackedWeight]:
    """Module name -> PackedWeight of every quantized layer; ExportError for a float model."""
    layers = {name: m.packed for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers:
        raise ExportError("the model has no quantized layers: quantize it (quantllm quantize) before exporting")
    return layers

"""Helpers the GPTQ and AWQ importers/exporters share: int32 bit streams, reading a
safetensors checkpoint directory, building a model skeleton around imported layers
(``load_checkpoint``, given the format's per-layer converter).

GPTQ and AWQ both pack codes into int32 words as a little-endian bit stream (code ``i``
of a word at bit ``i * bits``; GPTQ's 3-bit layout lets codes straddle words, which a
continuous stream also describes). Our packed layout (``formats.pack_codes``) is the
same stream cut into bytes, so on a little-endian host packing is a byte reinterpretation.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import QuantConfig
from ..formats import pack_codes, unpack_codes
from ..packed import PackedWeight

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


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the checkpoint is corrupt") from exc


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


def build_skeleton(path: Path, dtype: torch.dtype):
    """The model class of ``path``'s config.json with parameters on the meta device (no float
    weights are allocated; buffers such as rotary frequencies are real)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # we build the quantized layers ourselves
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def finish_model(model, rest: dict[str, torch.Tensor], dtype: torch.dtype, source: Path):
    """Load the float tensors ``rest`` into ``model`` (assigning, not copying), tie weights and
    check that nothing is left on the meta device."""
    rest = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in rest.items()}
    model.load_state_dict(rest, strict=False, assign=True)
    model.tie_weights()
    empty = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if empty:
        raise ValueError(f"{source} lacks tensors for: {', '.join(empty[:5])}"
                         + (f" (and {len(empty) - 5} more)" if len(empty) > 5 else ""))
    return model.eval()


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
    from ..quantize import mark_quantized, replace_linear

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
    model = finish_model(model, tensors, dtype, path)
    mark_quantized(model, config)
    return model.to(device), load_tokenizer(path)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer
    if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(path)
    return None


def float_state(model) -> dict[str, torch.Tensor]:
    """State of every non-quantized tensor (QuantLinear buffers excluded), contiguous,
    with tied tensors stored once (safetensors refuses shared storage)."""
    from ..modules import QuantLinear

    skip = {f"{name}.{b}" for name, m in model.named_modules() if isinstance(m, QuantLinear)
            for b in ("qweight", "scales", "zeros", "g_idx")}
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        if name in skip:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue  # a tied alias (lm_head = embed_tokens): tie_word_embeddings restores it
        seen.add(key)
        out[name] = t.detach().contiguous()
    return out


def write_checkpoint(model, tokenizer, out: Path, tensors: dict[str, torch.Tensor],
                     quantization_config: dict, extra_files: dict[str, dict] | None = None) -> Path:
    """Write ``tensors`` as model.safetensors with the model's config (carrying
    ``quantization_config``), generation config and tokenizer, atomically."""
    from ..serialization import atomic_directory

    out = Path(out)
    with atomic_directory(out, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
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
    return out

"""GGUF files: read their Q4_0 / Q4_1 / Q8_0 tensors straight into packed layers, and
write quantllm models as GGUF that llama.cpp runs.

Which GGUF tensor is which Hugging Face parameter, and how llama.cpp reorders rows of
the attention projections, is taken from transformers' own GGUF loader (its name map and
tensor processors), so the two loaders cannot disagree. Block layouts and row orders:
``_gguf_blocks``; writing: ``gguf_export``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import gguf
import torch
from gguf import GGUFReader
from torch import nn

from ..config import QuantConfig
from ..errors import CheckpointError
from ..file_headers import read_gguf_header
from ..formats import FORMATS, pack_codes
from ..loading import load_gguf
from ..packed import PackedWeight
from ..model_surgery import mark_quantized, replace_linear
from . import _gguf_blocks as blocks

log = logging.getLogger("quant_core.interop")
PACKED_SUFFIX = "#packed"  # load_model("file.gguf#packed") keeps GGUF's quantized tensors packed


def _processor(model, arch: str):
    # transformers at call time: it takes seconds to import, and `import quant_core` reaches this module
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor
    return TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=model.config.to_dict())


def linear_names(model: nn.Module, arch: str) -> dict[str, str]:
    """GGUF tensor name -> module name for every ``nn.Linear``, from gguf-py's own name map
    (the table transformers' GGUF loader uses; walking only the linears keeps it fast)."""
    arch_id = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_id is None:
        raise ValueError(f"gguf-py does not know the architecture {arch!r}; upgrade the gguf package")
    table = gguf.get_tensor_name_map(arch_id, model.config.num_hidden_layers)
    out = {}
    for name, module in model.named_modules():
        mapped = table.get_name(name) if isinstance(module, nn.Linear) else None
        if mapped is not None:
            out[f"{mapped}.weight"] = name
    return out


def import_gguf_layers(model: nn.Module, path, compute_dtype: str = "auto") -> dict[str, str]:
    """Replace every ``nn.Linear`` of ``model`` (loaded from the GGUF file ``path``) whose GGUF
    tensor is Q4_0 / Q4_1 / Q8_0 by a QuantLinear holding exactly those codes and scales.
    Other types stay as transformers dequantized them (with a warning). Returns layer -> GGUF type."""
    path = Path(path)
    arch = read_gguf_header(path)["metadata"].get("general.architecture")  # structure checked before gguf-py reads it
    if not isinstance(arch, str):
        raise CheckpointError(f"{path} has no general.architecture; it is not a model GGUF file")
    reader = GGUFReader(str(path))
    processor = _processor(model, arch)
    names = linear_names(model, arch)
    imported, left_float = {}, []
    config = QuantConfig(weight_dtype="int4", group_size=blocks.QK, scheme="sym", scale_dtype="fp16",
                         compute_dtype=compute_dtype, modules_to_not_convert=[], head_weight_dtype=None)
    kinds = []
    for t in reader.tensors:
        module_name = names.get(t.name)
        if module_name is None:
            continue
        module = model.get_submodule(module_name)
        kind = t.tensor_type.name
        n, k = module.out_features, module.in_features
        perm = blocks.row_permutation(processor, t.name, n)
        if kind not in blocks.BLOCK_BYTES or k % blocks.QK or perm == "unsupported":
            left_float.append(f"{module_name} ({kind})")
            continue
        check_gguf_tensor(t, kind, n, k, path)
        codes, scales, zeros = blocks.decode(t.data, kind, n, k)
        if perm is not None:
            codes, scales = codes[perm], scales[perm]
            zeros = None if zeros is None else zeros[perm]
        fmt = FORMATS[blocks.FORMAT_OF[kind]]
        qweight = blocks.pack_int4(codes) if fmt.bits == 4 else pack_codes(codes, fmt.bits)
        packed = PackedWeight(fmt, k, n, blocks.QK, qweight.contiguous(), scales, zeros)
        replace_linear(model, module_name, packed, module.bias, config)
        imported[module_name] = kind
        kinds.append(kind)
    if left_float:
        log.warning("%d GGUF tensors have no exact quantllm format and were dequantized to float: %s",
                    len(left_float), ", ".join(left_float[:8]) + (" ..." if len(left_float) > 8 else ""))
    if imported:
        main = max(set(kinds), key=kinds.count)
        mark_quantized(model, config.model_copy(update={
            "weight_dtype": blocks.FORMAT_OF[main], "scheme": "asym" if "Q4_1" in kinds else "sym",
            "modules_to_not_convert": [] if "lm_head" in imported else ["lm_head"]}))
        # beside quantization_config, which must stay a valid QuantConfig dict
        model.config.quantllm_import = {"from": "gguf", "types": sorted(set(kinds))}
    return imported


def check_gguf_tensor(t, kind: str, n: int, k: int, path: Path) -> None:
    """The GGUF tensor holds exactly an ``[n, k]`` weight of ``kind`` blocks (GGUF lists dims
    innermost first: ``(k, n)``), as the model transformers built from the same file needs."""
    dims = tuple(int(d) for d in t.shape)
    if dims != (k, n) or t.data.nbytes != n * (k // blocks.QK) * blocks.BLOCK_BYTES[kind]:
        raise CheckpointError(f"{path}: tensor {t.name} ({kind}, dims {dims}, {t.data.nbytes} bytes) does not hold "
                              f"the {n} x {k} weight the model's metadata describes; the file is corrupt")


def load_gguf_packed(path, dtype: torch.dtype = torch.float32, device="cpu", compute_dtype: str = "auto"):
    """A GGUF file with its Q4_0/Q4_1/Q8_0 linear weights kept packed; returns (model, tokenizer)."""
    path = Path(str(path).removesuffix(PACKED_SUFFIX))
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    model, tokenizer = load_gguf(path, dtype=dtype, device="cpu")
    if not import_gguf_layers(model, path, compute_dtype):
        log.warning("%s has no Q4_0/Q4_1/Q8_0 linear weights; the model stays float", path)
    return model.to(device).eval(), tokenizer


def is_packed_gguf_source(source) -> bool:
    return str(source).endswith(".gguf" + PACKED_SUFFIX)


__all__ = ["import_gguf_layers", "load_gguf_packed", "PACKED_SUFFIX"]

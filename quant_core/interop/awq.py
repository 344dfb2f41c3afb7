"""AWQ checkpoints in the GEMM layout (AutoAWQ ``version: gemm``) in and out.

Per quantized linear ``prefix`` with ``K`` inputs, ``N`` outputs and ``G = K / group_size``:

* ``prefix.qweight`` int32 ``[K, N / 8]``: packed along the *output* dimension, eight 4-bit
  codes per word, in the interleaved order ``AWQ_ORDER``: nibble ``i`` (bits ``4i..4i+3``)
  of word ``c`` holds output column ``8c + AWQ_ORDER[i]``.
* ``prefix.qzeros`` int32 ``[G, N / 8]``: zero points, packed the same way (no offset).
* ``prefix.scales`` fp16 ``[G, N]``. There is no ``g_idx``: groups are ``k // group_size``.

Dequantization: ``w[n, k] = (q[k, n] - zero[k // gs, n]) * scales[k // gs, n]``, our
``(u - z) * s`` transposed; the codes are re-packed (AWQ packs along N, we along K),
never turned into floats.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint_io import read_json, read_quantization_config, write_checkpoint
from ..errors import ExportError
from ..formats import FORMATS, pack_codes
from ..packed import PackedWeight
from ._checkpoint import float_state, load_checkpoint, pack_int32, quantized_layers, unpack_int32

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i holds column AWQ_ORDER[i] of its 8
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column j sits in nibble AWQ_REVERSE_ORDER[j]
EXPORTABLE = ("4-bit int formats int4_fullrange / int4_clip, scheme 'sym' or 'asym' (integer zero "
              "points), group_size > 0 dividing in_features, no act-order g_idx, fp16 scales, "
              "out_features a multiple of 8")


def read_awq_config(path: Path) -> dict | None:
    path = Path(path)
    qc = read_quantization_config(path)
    if isinstance(qc, dict) and str(qc.get("quant_method", "")).lower() == "awq":
        return qc
    qc = read_json(path / "quant_config.json")  # AutoAWQ's own file
    if isinstance(qc, dict) and ("w_bit" in qc or str(qc.get("quant_method", "")).lower() == "awq"):
        return qc
    return None


def is_awq_dir(path) -> bool:
    return Path(path).is_dir() and read_awq_config(Path(path)) is not None


def _interleave(codes: torch.Tensor, order) -> torch.Tensor:
    """Permute columns within each block of 8: ``out[:, 8c + i] = codes[:, 8c + order[i]]``."""
    r, c = codes.shape
    return codes.reshape(r, c // 8, 8)[:, :, list(order)].reshape(r, c)


def _unpack_awq(words: torch.Tensor, n: int) -> torch.Tensor:
    """int32 ``[R, n/8]`` in AWQ order -> uint8 codes ``[R, n]`` in column order."""
    return _interleave(unpack_int32(words, 4, n), AWQ_REVERSE_ORDER)


def _pack_awq(codes: torch.Tensor) -> torch.Tensor:
    return pack_int32(_interleave(codes, AWQ_ORDER).contiguous(), 4)


def layer_from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                   group_size: int) -> PackedWeight:
    """One AWQ GEMM layer -> PackedWeight, exact."""
    fmt = FORMATS["int4_fullrange"]
    k, n = qweight.shape[0], qweight.shape[1] * 8
    codes = _unpack_awq(qweight, n).t().contiguous()  # [N, K]
    zeros = _unpack_awq(qzeros, n).t().contiguous()  # [N, G]
    if bool((zeros == fmt.sym_zero).all()):
        zeros = None
    gs = -1 if group_size <= 0 or group_size >= k else group_size
    return PackedWeight(fmt, k, n, gs, pack_codes(codes, 4), scales.t().contiguous(), zeros)


def layer_to_awq(packed: PackedWeight) -> dict[str, torch.Tensor]:
    zeros = packed.zeros if packed.zeros is not None else torch.full(
        (packed.out_features, packed.n_groups), packed.fmt.sym_zero, dtype=torch.uint8)
    return {"qweight": _pack_awq(packed.codes().t().contiguous()),
            "qzeros": _pack_awq(zeros.t().contiguous()),
            "scales": packed.scales.half().t().contiguous()}


def check_exportable(name: str, packed: PackedWeight) -> None:
    why = None
    if packed.fmt.is_codebook or packed.fmt.bits != 4:
        why = f"{packed.fmt.name} is not a 4-bit integer format"
    elif packed.zero_mode == "min":
        why = "its zero points are float group minimums (GGUF Q4_1 style)"
    elif packed.g_idx is not None:
        why = "it has an act-order g_idx, which AWQ has no tensor for"
    elif packed.group_size <= 0 or packed.in_features % packed.group_size:
        why = f"group_size {packed.group_size} does not divide in_features {packed.in_features} into whole groups"
    elif packed.out_features % 8:
        why = f"out_features {packed.out_features} is not a multiple of 8"
    elif packed.scales.dtype != torch.float16 and not torch.equal(
            packed.scales.half().to(packed.scales.dtype), packed.scales):
        why = f"its {packed.scales.dtype} scales are not exactly representable in fp16"
    if why:
        raise ExportError(f"cannot export layer {name} to AWQ: {why}. AWQ (GEMM) can hold: {EXPORTABLE}")


def load_awq(path, dtype: torch.dtype = torch.float32, device="cpu", compute_dtype: str = "auto"):
    """Load an AWQ GEMM checkpoint directory into quantllm layers; returns (model, tokenizer)."""
    path = Path(path)
    qc = read_awq_config(path)
    if qc is None:
        raise ValueError(f"{path} is not an AWQ checkpoint (no quant_method 'awq' in config.json)")
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    group_size = int(qc.get("group_size", qc.get("q_group_size", 128)))
    version = str(qc.get("version", "gemm")).lower()
    if bits != 4 or version != "gemm" or not qc.get("zero_point", True):
        raise ValueError(f"only 4-bit AWQ with zero_point=true in the GEMM layout is read; {path} has "
                         f"bits={bits}, version={version!r}, zero_point={qc.get('zero_point', True)}")

    def layer_from(prefix, tensors):
        return layer_from_awq(tensors.pop(f"{prefix}.qweight"), tensors.pop(f"{prefix}.qzeros"),
                              tensors.pop(f"{prefix}.scales"), group_size)

    return load_checkpoint(path, "AWQ", layer_from, dtype, device, compute_dtype)


def export_awq(model, tokenizer, out) -> Path:
    """Write ``model`` as an AWQ GEMM checkpoint (transformers' AWQ integration, vLLM ``awq``)."""
    layers = quantized_layers(model)
    for name, packed in layers.items():
        check_exportable(name, packed)
    sizes = {p.group_size for p in layers.values()}
    if len(sizes) > 1:
        raise ExportError(f"AWQ configs hold one group size for the whole model; this model mixes {sorted(sizes)}")
    tensors = float_state(model)
    for name, packed in layers.items():
        tensors.update({f"{name}.{k}": v for k, v in layer_to_awq(packed).items()})
    qc = {"quant_method": "awq", "bits": 4, "group_size": sizes.pop(), "zero_point": True,
          "version": "gemm", "modules_to_not_convert": None}
    legacy = {"w_bit": 4, "q_group_size": qc["group_size"], "zero_point": True, "version": "GEMM"}
    write_checkpoint(model, tokenizer, out, tensors, qc, extra_files={"quant_config.json": legacy})
    return Path(out)

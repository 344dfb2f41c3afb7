"""GPTQ checkpoints (the AutoGPTQ / GPTQModel layout) in and out.

Per quantized linear ``prefix`` a GPTQ checkpoint holds, for ``K`` inputs, ``N`` outputs,
``G`` groups and ``b`` bits:

* ``prefix.qweight`` int32 ``[K * b / 32, N]``: column ``n`` is a little-endian bit stream
  of the ``K`` unsigned codes of output ``n`` (3-bit codes straddle words).
* ``prefix.qzeros`` int32 ``[G, N * b / 32]``: row ``g`` is the bit stream of the ``N``
  zero points of group ``g``. Checkpoint format ``gptq`` (v1) stores ``zero - 1``
  (readers add 1 and mask to ``b`` bits, as AutoGPTQ's reference kernel does);
  ``gptq_v2`` stores the zero itself.
* ``prefix.scales`` fp16 ``[G, N]``; ``prefix.g_idx`` int32 ``[K]``, the group of each
  input (a permutation of ``k // group_size`` with act-order, ``desc_act: true``).

Dequantization: ``w[n, k] = scales[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n])``, which is
our ``(u - z) * s`` with the tensors transposed, so import and export move bits without
touching a float weight.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..checkpoint_io import EXPORT_REPLACEABLE, check_output, read_json, read_quantization_config, write_checkpoint
from ..errors import CheckpointError, ExportError
from ..formats import FORMATS
from ..packed import PackedWeight
from ..primitives import default_g_idx, n_groups
from ._checkpoint import (check_tensor, config_int, float_state, load_checkpoint, pack_int32, quantized_layers,
                          unpack_int32)

FORMAT_OF_BITS = {2: "int2", 3: "int3", 4: "int4_fullrange", 8: "int8"}
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")
EXPORTABLE = ("int formats int2, int3, int4_fullrange, int4_clip, int8 with scheme 'sym' or 'asym' "
              "(integer zero points), a group_size that divides every layer's in_features (or -1), fp16 scales, "
              "in_features a multiple of 32")
COMMON_GROUP_SIZES = (16, 32, 64, 128, 256)


# ---------------------------------------------------------------- reading
def read_gptq_config(path: Path) -> dict | None:
    """The GPTQ quantization config of a checkpoint directory, or None if it is not GPTQ."""
    path = Path(path)
    qc = read_quantization_config(path)
    if isinstance(qc, dict) and str(qc.get("quant_method", "")).lower() == "gptq":
        return qc
    qc = read_json(path / "quantize_config.json")  # AutoGPTQ writes it beside config.json
    if isinstance(qc, dict) and str(qc.get("quant_method", "gptq")).lower() == "gptq" and "bits" in qc:
        return qc
    return None


def is_gptq_dir(path) -> bool:
    return Path(path).is_dir() and read_gptq_config(Path(path)) is not None


def layer_from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                    g_idx: torch.Tensor | None, bits: int, group_size: int,
                    checkpoint_format: str = "gptq") -> PackedWeight:
    """One GPTQ layer's tensors -> PackedWeight, exact (codes and scales are moved, not recomputed)."""
    if bits not in FORMAT_OF_BITS:
        raise ValueError(f"GPTQ bits={bits} is not supported; supported: {sorted(FORMAT_OF_BITS)}")
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(f"unknown GPTQ checkpoint_format {checkpoint_format!r}; known: {CHECKPOINT_FORMATS}")
    fmt = FORMATS[FORMAT_OF_BITS[bits]]
    n = qweight.shape[1]
    k = g_idx.shape[0] if g_idx is not None else qweight.shape[0] * 32 // bits
    # Column n of qweight, read as bytes, is exactly row n of our packed layout.
    packed_rows = qweight.t().contiguous().reshape(-1).view(torch.uint8).reshape(n, -1)[:, : fmt.packed_row_bytes(k)]
    zeros = unpack_int32(qzeros, bits, n).t().contiguous()  # [N, G]
    if checkpoint_format == "gptq":
        zeros = ((zeros.to(torch.int16) + 1) & fmt.max_code).to(torch.uint8)
    if bool((zeros == fmt.sym_zero).all()):
        zeros = None  # symmetric: our fixed zero point 2**(bits-1) is GPTQ's sym zero
    gs = -1 if group_size in (-1, 0, None) or group_size >= k else group_size
    if g_idx is not None:
        g_idx = g_idx.to(torch.int32)
        if torch.equal(g_idx, default_g_idx(k, gs)):
            g_idx = None  # the plain k // group_size order needs no index
    return PackedWeight(fmt, k, n, gs, packed_rows.contiguous(), scales.t().contiguous(), zeros,
                        None if g_idx is None else g_idx.contiguous())


def gptq_settings(qc: dict, path: Path) -> tuple[int, int, str]:
    """(bits, group_size, checkpoint_format) of a GPTQ config, each checked; CheckpointError otherwise."""
    what = f"GPTQ config of {path}"
    bits, group_size = config_int(qc, ("bits",), None, what), config_int(qc, ("group_size",), -1, what)
    ckpt_format = qc.get("checkpoint_format", qc.get("format", "gptq"))
    if bits not in FORMAT_OF_BITS:  # before reading gigabytes
        raise CheckpointError(f"GPTQ bits={bits} is not supported; supported: {sorted(FORMAT_OF_BITS)}")
    if not isinstance(ckpt_format, str) or ckpt_format.lower() not in CHECKPOINT_FORMATS:
        raise CheckpointError(f"GPTQ checkpoint_format {ckpt_format!r} is not supported (marlin/bitblas "
                              f"repacked checkpoints are not read); supported: {CHECKPOINT_FORMATS}")
    if group_size < -1:
        raise CheckpointError(f"GPTQ group_size {group_size} is invalid (-1, 0 or a positive size)")
    return bits, group_size, ckpt_format.lower()


def check_gptq_layer(prefix: str, tensors: dict, k: int, n: int, bits: int, group_size: int) -> tuple:
    """Pop and check one layer's tensors against the model's ``k`` inputs, ``n`` outputs and the
    config's bits and group size: (qweight, qzeros, scales, g_idx or None)."""
    what = f"GPTQ layer {prefix} (config: {bits} bits, group_size {group_size})"
    if k * bits % 32 or n * bits % 32:
        raise CheckpointError(f"{what}: {k} inputs / {n} outputs of {bits} bits do not fill whole int32 words")
    gs = -1 if group_size in (-1, 0) or group_size >= k else group_size
    g = n_groups(k, gs)
    qweight = check_tensor(what, f"{prefix}.qweight", tensors, (k * bits // 32, n), (torch.int32,))
    qzeros = check_tensor(what, f"{prefix}.qzeros", tensors, (g, n * bits // 32), (torch.int32,))
    scales = check_tensor(what, f"{prefix}.scales", tensors, (g, n), "float")
    g_idx = None
    if f"{prefix}.g_idx" in tensors:
        g_idx = check_tensor(what, f"{prefix}.g_idx", tensors, (k,), (torch.int32, torch.int64))
        if g_idx.numel() and (int(g_idx.min()) < 0 or int(g_idx.max()) >= g):
            raise CheckpointError(f"{what}: g_idx names groups outside 0..{g - 1}")
    elif gs > 0 and k % g == 0 and gs != k // g:
        raise CheckpointError(f"{what}: the tensors hold {g} groups, i.e. groups of {k // g} inputs, but the config "
                              f"says {group_size} and there is no g_idx to tell which: fix group_size in the config")
    return qweight, qzeros, scales, g_idx


def zero_convention_problem(stored: torch.Tensor, bits: int, ckpt_format: str, statistics: bool) -> str | None:
    """Why the stored zero points contradict the checkpoint_format label (v1 stores zero - 1), or
    None. Symmetric checkpoints are certain (one constant); asymmetric ones are judged by the
    mean, which sits near the middle code for real weights (``statistics``: run that guess)."""
    sym_zero, maxq = 1 << (bits - 1), (1 << bits) - 1
    values = stored.unique()
    if values.numel() == 1:
        v = int(values[0])
        if ckpt_format == "gptq_v2" and v == sym_zero - 1:
            return (f"every stored zero point is {v}, how the v1 'gptq' layout stores the symmetric zero {sym_zero}; "
                    f"set checkpoint_format (and format) to 'gptq'")
        if ckpt_format == "gptq" and v == sym_zero:
            return (f"every stored zero point is {v}, how 'gptq_v2' stores the symmetric zero {sym_zero} (v1 would "
                    f"store {sym_zero - 1}); set checkpoint_format (and format) to 'gptq_v2'")
        return None
    if not statistics or stored.numel() < 256:
        return None
    mean = float(stored.float().mean()) + (1 if ckpt_format == "gptq" else 0)
    if abs(mean - maxq / 2) > 0.5:  # v1 read as v2 is one code low, v2 read as v1 one code high
        other = "gptq" if ckpt_format == "gptq_v2" else "gptq_v2"
        return (f"the zero points average {mean:.2f} where {maxq / 2} is expected; this looks like a '{other}' "
                f"checkpoint: set checkpoint_format to '{other}', or load with verify=False (--no-verify) if the "
                f"label is right")
    return None


def load_gptq(path, dtype: torch.dtype = torch.float32, device="cpu", compute_dtype: str = "auto",
              verify: bool = True):
    """Load a GPTQ checkpoint directory into quantllm ``QuantLinear`` layers; returns (model, tokenizer).
    Every tensor is checked against the config and the model; ``verify=False`` skips only the
    statistical guess at a mislabelled checkpoint_format."""
    path = Path(path)
    qc = read_gptq_config(path)
    if qc is None:
        raise CheckpointError(f"{path} is not a GPTQ checkpoint (no quant_method 'gptq' in config.json "
                              f"or quantize_config.json)")
    bits, group_size, ckpt_format = gptq_settings(qc, path)

    stored_zeros = []

    def layer_from(prefix, tensors, k, n):
        qweight, qzeros, scales, g_idx = check_gptq_layer(prefix, tensors, k, n, bits, group_size)
        stored_zeros.append(unpack_int32(qzeros, bits, n).reshape(-1))
        return layer_from_gptq(qweight, qzeros, scales, g_idx, bits, group_size, ckpt_format)

    def after_layers():
        why = zero_convention_problem(torch.cat(stored_zeros), bits, ckpt_format, statistics=verify)
        if why:
            raise CheckpointError(f"{path} is labelled checkpoint_format '{ckpt_format}' but {why}")

    return load_checkpoint(path, "GPTQ", layer_from, dtype, device, compute_dtype, after_layers)


# ---------------------------------------------------------------- writing
def check_exportable(name: str, packed: PackedWeight, checkpoint_format: str = "gptq") -> None:
    """Raise ExportError (naming what can be exported) if GPTQ cannot hold this layer exactly."""
    why = None
    if packed.fmt.is_codebook:
        why = f"{packed.fmt.name} is a codebook format; GPTQ stores integer codes"
    elif packed.fmt.bits not in FORMAT_OF_BITS:
        why = f"{packed.fmt.bits}-bit codes are not a GPTQ bit width"
    elif packed.zero_mode == "min":
        why = "its zero points are float group minimums (GGUF Q4_1 style); GPTQ stores integer zero points"
    elif packed.in_features * packed.fmt.bits % 32 or packed.out_features * packed.fmt.bits % 32:
        why = f"in/out features {packed.in_features}/{packed.out_features} do not fill whole int32 words"
    elif packed.scales.dtype != torch.float16 and not torch.equal(
            packed.scales.half().to(packed.scales.dtype), packed.scales):
        why = f"its {packed.scales.dtype} scales are not exactly representable in fp16"
    elif checkpoint_format == "gptq" and packed.zeros is not None and bool((packed.zeros == 0).any()):
        why = ("a zero point is 0, which the v1 'gptq' layout (it stores zero - 1) cannot hold; "
               "export with checkpoint_format='gptq_v2'")
    if why:
        raise ExportError(f"cannot export layer {name} to GPTQ: {why}. GPTQ can hold: {EXPORTABLE}")


def check_whole_groups(layers: dict[str, PackedWeight]) -> None:
    """vLLM's GPTQ loader sizes ``scales`` as ``in_features // group_size`` rows and asserts the
    checkpoint's shape matches, so a partial last group (group_size 128 over 576 columns) cannot load.
    Refuse it, naming the group sizes that divide every layer."""
    partial = {name: p for name, p in layers.items() if p.group_size > 0 and p.in_features % p.group_size}
    if not partial:
        return
    name, packed = next(iter(partial.items()))
    widths = sorted({p.in_features for p in layers.values()})
    divide = [g for g in COMMON_GROUP_SIZES if math.gcd(*widths) % g == 0]
    raise ExportError(
        f"cannot export to GPTQ: group_size {packed.group_size} leaves a partial last group in {len(partial)} "
        f"layer(s) (e.g. {name}: {packed.in_features} input columns), which vLLM's GPTQ loader cannot load. "
        f"Quantize with a group size that divides every layer's width {widths}: "
        f"{', '.join(map(str, divide)) or 'none of ' + str(COMMON_GROUP_SIZES)}, or -1 (one group per output "
        f"channel)")


def layer_to_gptq(packed: PackedWeight, checkpoint_format: str = "gptq") -> dict[str, torch.Tensor]:
    """PackedWeight -> GPTQ tensors (qweight, qzeros, scales, g_idx); exact."""
    bits, n = packed.fmt.bits, packed.out_features
    qweight = packed.qweight.contiguous().reshape(-1).view(torch.int32).reshape(n, -1).t().contiguous()  # [K*b/32, N]
    zeros = packed.zeros if packed.zeros is not None else torch.full(
        (n, packed.n_groups), packed.fmt.sym_zero, dtype=torch.uint8)
    if checkpoint_format == "gptq":
        zeros = zeros - 1  # v1 convention; zero 0 was refused by check_exportable
    qzeros = pack_int32(zeros.t().contiguous(), bits)  # [G, N*b/32]
    return {"qweight": qweight, "qzeros": qzeros, "scales": packed.scales.half().t().contiguous(),
            "g_idx": packed.group_index().to(torch.int32).contiguous()}


def export_gptq(model, tokenizer, out, checkpoint_format: str = "gptq", overwrite: bool = False) -> Path:
    """Write ``model`` as a GPTQ checkpoint that transformers (GPTQ integration), GPTQModel and vLLM load;
    ``overwrite`` replaces only an empty folder or a checkpoint of ours (``checkpoint_io.check_output``)."""
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(f"unknown GPTQ checkpoint_format {checkpoint_format!r}; choose one of {CHECKPOINT_FORMATS}")
    check_output(Path(out), overwrite, EXPORT_REPLACEABLE)  # before any work
    layers = quantized_layers(model)
    check_whole_groups(layers)
    for name, packed in layers.items():  # every refusal before any writing
        check_exportable(name, packed, checkpoint_format)
    bits = {p.fmt.bits for p in layers.values()}
    sizes = {p.group_size for p in layers.values()}
    if len(bits) > 1 or len(sizes) > 1:
        raise ExportError(f"GPTQ configs hold one bit width and one group size for the whole model; "
                          f"this model mixes bits {sorted(bits)} and group sizes {sorted(sizes)}")
    tensors = float_state(model)
    for name, packed in layers.items():
        tensors.update({f"{name}.{k}": v for k, v in layer_to_gptq(packed, checkpoint_format).items()})
    qc = gptq_config(bits.pop(), sizes.pop(), desc_act=any(p.g_idx is not None for p in layers.values()),
                     sym=all(p.zeros is None for p in layers.values()), checkpoint_format=checkpoint_format)
    write_checkpoint(model, tokenizer, out, tensors, qc, extra_files={"quantize_config.json": qc}, overwrite=overwrite,
                     replaceable=EXPORT_REPLACEABLE, metadata={"producer": "quantllm"})
    return Path(out)


def gptq_config(bits: int, group_size: int, desc_act: bool, sym: bool, checkpoint_format: str) -> dict:
    """The quantization_config fields transformers' GPTQConfig, GPTQModel and vLLM's
    GPTQConfig / GPTQMarlinConfig read (vLLM requires bits, group_size, desc_act, sym)."""
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act,
            "sym": sym, "true_sequential": True, "static_groups": False, "damp_percent": 0.01,
            "lm_head": False, "checkpoint_format": checkpoint_format, "format": checkpoint_format,
            "pack_dtype": "int32", "meta": {"quantizer": ["quantllm:0.1.0"]}}

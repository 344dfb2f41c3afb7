"""Human-readable summary of a (quantized) model: config, sizes, kernel choice per layer kind."""
from __future__ import annotations

import json
from collections import defaultdict

import torch

from .kernels.registry import explain
from .modules import QuantLinear
from .output_head import embedding_source


def packed_bytes(model) -> int:
    """Bytes of every quantized layer's tensors, outliers included."""
    return sum(m.packed.nbytes() for m in model.modules() if isinstance(m, QuantLinear))


def outlier_bytes(model) -> int:
    return sum(m.packed.outlier_bytes() for m in model.modules() if isinstance(m, QuantLinear))


def describe(model, device_type: str = "cpu") -> str:
    qc = getattr(model.config, "quantization_config", None)
    lines = []
    if isinstance(qc, dict):
        shown = {k: v for k, v in qc.items() if k not in ("layers", "checksums")}
        lines.append("quantization_config: " + json.dumps(shown, sort_keys=True))
    quant = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    float_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    outliers = outlier_bytes(model)
    lines.append(f"quantized linear layers: {len(quant)}; packed size {packed_bytes(model) / 1e6:.2f} MB"
                 + (f" (of which sparse fp16 outliers {outliers / 1e6:.2f} MB)" if outliers else "")
                 + f"; other (float) parameters {float_bytes / 1e6:.2f} MB")
    kinds = defaultdict(list)
    for name, mod in quant:
        kinds[name.rsplit(".", 1)[-1]].append(mod)
    device = torch.device(device_type).type
    for kind, mods in kinds.items():
        mod = mods[0]
        lines.append(f"{kind} x{len(mods)}: {mod.in_features}->{mod.out_features}, {mod.weight_dtype}, "
                     f"group {mod.group_size}, {'sym' if mod.zeros is None else 'asym'}" + _outlier_note(mods))
        verdicts = explain(mod.layer_spec(device))
        chosen = next((n for n, ok, _ in verdicts if ok), None)
        for name, ok, reason in verdicts:
            mark = "chosen" if name == chosen else ("usable" if ok else "rejected")
            lines.append(f"    {name:<12} {mark:<8} {reason}")
    if not quant:
        lines.append("no quantized layers (a float model)")
    else:
        lines.append(_head_line(model))
    return "\n".join(lines)


def _outlier_note(mods) -> str:
    """``, outliers: ...`` for layers of one kind that keep sparse fp16 outliers."""
    held = [m.outliers for m in mods if m.outliers is not None]
    if not held:
        return ""
    unit = "columns" if held[0].structure == "columns" else "weights"
    return (f", outliers: {held[0].structure}, {sum(o.count for o in held)} {unit} in {len(held)} layers, "
            f"{sum(o.nbytes() for o in held) / 1e3:.1f} kB")


def _head_line(model) -> str:
    """What the output head is stored as, and where the input embedding's rows come from."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return "output head: none"
    if not isinstance(head, QuantLinear):
        return f"output head: float ({next(head.parameters()).dtype}; head_weight_dtype=None)"
    source = embedding_source(model)
    embed = f"; input embedding reads its rows ({source})" if source else ""
    return f"output head: {head.weight_dtype}, group {head.group_size}, {head.packed.nbytes() / 1e6:.2f} MB{embed}"

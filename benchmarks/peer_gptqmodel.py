"""GPTQModel's GPTQ (``gptqmodel``, a peer; never a dependency of quantllm) on the table's calibration windows.

``quantize(model_dir, column, batches, out_dir, device)`` quantizes the float model in ``model_dir`` with
GPTQModel at its own defaults for everything but the column's format (bits, group size, sym), on exactly
the token windows our algorithms calibrate on, and saves a GPTQ checkpoint to ``out_dir``; the caller
loads it through quantllm's GPTQ import (lossless: it moves the codes, scales and zeros without touching
a float weight) and measures perplexity with the same code and windows as our cells.

API as read in gptqmodel 7.6.0's sources: ``QuantizeConfig(bits, group_size, sym, ...)`` (a
``GPTQConfig``: ``damp_percent`` defaults by method, ``act_group_aware`` on for GPTQ, ``desc_act`` off),
``GPTQModel.load(path, quantize_config)``, ``model.quantize(calibration=[{"input_ids", "attention_mask"}],
batch_size=...)``, ``model.save(path)``.
"""
from __future__ import annotations

from quality_columns import COLUMNS

BITS = {"int4_fullrange": 4, "int3": 3, "int2": 2, "int8": 8}


def gptq_format(column: str) -> dict:
    """The column as GPTQModel's (bits, group_size, sym); formats GPTQ has no grid for raise ValueError."""
    qc = COLUMNS[column]["quant_config"]
    if qc["weight_dtype"] not in BITS:
        raise ValueError(f"GPTQModel has no {qc['weight_dtype']} format (integer grids only)")
    return {"bits": BITS[qc["weight_dtype"]], "group_size": qc["group_size"], "sym": qc["scheme"] == "sym"}


def quantize(model_dir: str, column: str, batches, out_dir: str, device: str = "cpu") -> dict:
    """Quantize and save; returns the settings GPTQModel ran with (its defaults included)."""
    import os

    import torch
    # gptqmodel 7.6.0 sizes its CPU pool as half the cores, then asks 2 workers of it for loading: a
    # 2-core machine fails with "requests 2 workers but parent 'cpu' only has 1" unless this is set
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, (os.cpu_count() or 1) // 2)))
    from gptqmodel import GPTQModel, QuantizeConfig

    config = QuantizeConfig(**gptq_format(column), device=device)
    model = GPTQModel.load(model_dir, config, dtype=torch.float32)  # device: the config's (GPTQModel refuses both)
    windows = [row for batch in batches for row in batch]
    calibration = [{"input_ids": w.tolist(), "attention_mask": [1] * w.numel()} for w in windows]
    model.quantize(calibration, batch_size=8, calibration_concat_size=None)
    model.save(out_dir)
    used = {k: getattr(config, k) for k in ("bits", "group_size", "sym", "desc_act", "act_group_aware",
                                             "damp_percent", "true_sequential", "static_groups", "mse")}
    return {k: (v if isinstance(v, (bool, int, float, str)) or v is None else str(v)) for k, v in used.items()}

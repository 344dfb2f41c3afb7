"""AWQ's scale search left to the run (``awq_parent_batches``, ``awq_mlp_token_stride``,
``awq_scale_ridge`` None, the default): decided by where calibration runs.

The search scores 21 candidate scales per group by a forward of its attention or MLP, and on a CPU
those forwards are most of AWQ's time: on all 16 calibration batches SmolLM2 takes 1132 s on 2 cores
(issue 19 asks <= 300 s). On a GPU they cost seconds, and the all-window search is what the quality
table and scale tuning after it were measured with (26 of 26 tuned cells better on both texts).
On a CPU the search therefore compares one spread batch (8 windows) for attention and every 32nd
token of all 128 windows for the MLP, with a larger scale ridge (1.0 instead of 0.3), which kept
that smaller sample from fitting the calibration text's channels: `quantllm quantize --algorithm awq`
quantized SmolLM2 in 232.3 s on the quiet 2-core CPU, int4 g128 sym legal-ood median of three draws
22.61 against the all-window search's 23.63 (RTN 23.76), below RTN on both texts in every column of
benchmarks/results/quality.md (docs/calibration_speed.md, session 14).
Each field the user set keeps its value; the saved config records the resolved ones.
"""
from __future__ import annotations

import logging

import torch

from .config import QuantConfig

log = logging.getLogger("quant_core")

# device type -> the search's settings there; a device type missing here searches as on a GPU
SEARCHES = {
    "cpu": dict(awq_parent_batches=1, awq_mlp_token_stride=32, awq_scale_ridge=1.0),
    "cuda": dict(awq_parent_batches=32, awq_mlp_token_stride=1, awq_scale_ridge=0.3),
}


def resolve_awq_search(config: QuantConfig, device) -> QuantConfig:
    """``config`` with AWQ's search fields that it left None set for ``device``, where AWQ calibrates;
    any other algorithm's config unchanged (the fields stay None)."""
    if config.algorithm != "awq":
        return config
    kind = torch.device(device).type
    chosen = {name: value for name, value in SEARCHES.get(kind, SEARCHES["cuda"]).items()
              if getattr(config, name) is None}
    if chosen:
        log.info("AWQ scale search for %s (auto): %s", kind, ", ".join(f"{k}={v}" for k, v in chosen.items()))
    return config.model_copy(update=chosen)

"""Which weights QuantEase keeps in full precision (``outlier_fraction`` of them).

A weight ``w_rj`` costs ``H[j, j] * e^2`` in the layer loss when quantized with error ``e``,
and large weights also stretch their group's range, coarsening the grid for the whole group.
Both point at ``|w_rj| * sqrt(H[j, j])``: the weight's contribution to the output energy.
Unstructured outliers are the largest such entries of the layer; column outliers the input
columns with the largest ``H[j, j] * ||W[:, j]||^2``.
"""
from __future__ import annotations

import torch

from ..config import QuantConfig


def outlier_count(n: int, k: int, config: QuantConfig) -> int:
    """Outliers of an ``[n, k]`` weight: entries (unstructured) or columns, at least one."""
    total = k if config.outlier_structure == "columns" else n * k
    return max(1, round(total * config.outlier_fraction))


def outlier_mask(w: torch.Tensor, h: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """bool ``[N, K]``: the entries kept in full precision (whole columns for ``"columns"``)."""
    n, k = w.shape
    count = outlier_count(n, k, config)
    energy = w.square() * torch.diag(h)
    mask = torch.zeros_like(w, dtype=torch.bool)
    if config.outlier_structure == "columns":
        mask[:, energy.sum(0).topk(count).indices] = True
    else:
        mask.view(-1)[energy.flatten().topk(count).indices] = True
    return mask

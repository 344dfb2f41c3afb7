"""The clipping search AWQ runs after its scales (and TEQ with ``teq_clip_search``): per output row
and group, how far to narrow the quantization range so that the group's exact output error is least.

Narrowing a range trades larger error on the few largest weights for finer steps on all the others;
the error is measured with the layer's input Hessian, so the trade follows what the inputs excite.
"""
from __future__ import annotations

import torch

from ..config import QuantConfig
from ..primitives import grouped, group_width, n_groups, round_trip_groups, stored_qparams


@torch.no_grad()
def search_clip(w: torch.Tensor, H: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Per ``[row, group]`` range-shrink ratio minimising that group's output error.

    The error of row ``n``, group ``g`` is ``dw H_gg dw^T`` with ``H_gg`` the group's
    diagonal block of ``H``: groups are independent, so each is chosen on its own.
    """
    n, k = w.shape
    gs, g = group_width(k, config.group_size), n_groups(k, config.group_size)
    pad = g * gs - k
    Hp = torch.nn.functional.pad(H.float(), (0, pad, 0, pad))
    blocks = Hp.reshape(g, gs, g, gs).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [G, gs, gs]
    groups = grouped(w.float(), config.group_size)  # [N, G, gs]
    best_err = torch.full((n, g), float("inf"), device=w.device)
    best_ratio = torch.ones(n, g, device=w.device)
    for i in range(int(config.awq_clip_max_shrink * config.awq_clip_grid)):
        ratio = 1 - i / config.awq_clip_grid
        scale, zero = stored_qparams(groups, config.format, config.sym, config.torch_scale_dtype, shrink=ratio)
        dw = groups - round_trip_groups(groups, scale, zero, config.format)
        err = torch.einsum("ngi,gij,ngj->ng", dw, blocks, dw)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio

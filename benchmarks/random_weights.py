"""Random packed weights of a given format and shape: kernel timings need the bytes, not trained values."""
from __future__ import annotations

import torch

from quant_core.formats import get_format
from quant_core.packed import PackedWeight
from quant_core.primitives import n_groups


def random_packed(fmt_name, k, n, group_size, sym, gen):
    fmt = get_format(fmt_name)
    g = n_groups(k, group_size)
    qweight = torch.randint(0, 256, (n, fmt.packed_row_bytes(k)), dtype=torch.uint8, generator=gen)
    scales = (torch.rand(n, g, generator=gen) * 0.01 + 0.002).to(torch.float16)
    zeros = None if sym else torch.randint(6, 10, (n, g), dtype=torch.uint8, generator=gen)
    return PackedWeight(fmt, k, n, group_size, qweight, scales, zeros)

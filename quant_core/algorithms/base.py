"""What every algorithm returns for one weight."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import QuantConfig
from ..outliers import SparseResidual
from ..packed import PackedWeight


@dataclass
class QuantResult:
    codes: torch.Tensor  # uint8 [N, K]
    scales: torch.Tensor  # [N, G]
    zeros: torch.Tensor | None  # [N, G] unsigned codes, None when symmetric
    g_idx: torch.Tensor | None = None  # [K], None for k // group_size
    outliers: SparseResidual | None = None  # fp16 weights added to the codes' (QuantEase)

    def pack(self, config: QuantConfig) -> PackedWeight:
        """The packed weight; with ``config.double_quant`` its scales are stored as 8-bit codes and read
        back decoded. The codes stay those the algorithm chose (as bitsandbytes keeps its 4-bit codes
        when it compresses the absmax), and the calibrated algorithms propagate through the decoded
        scales, since they install this packed weight."""
        packed = PackedWeight.from_codes(self.codes, self.scales, self.zeros, config.format,
                                         config.group_size, self.g_idx, config.torch_scale_dtype, self.outliers)
        return packed.with_double_quant(config.double_quant_block) if config.double_quant else packed

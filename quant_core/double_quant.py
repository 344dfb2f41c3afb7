"""Double quantization: a layer's group scales stored as 8-bit codes (bitsandbytes' ``bnb_4bit_use_double_quant``,
Intel's ``use_double_quant``).

A layer's ``[N, G]`` scales are read row-major as one vector. Its mean is stored once (``offset``,
fp32 ``[1]``) and subtracted, so the codes spend their range on how the scales differ rather than
on their common size; the centred vector is cut into blocks of ``block`` scales, each stored as
int8 codes in ``[-127, 127]`` with the block's largest magnitude as its fp32 second-level scale
(``absmax``, one per block; the last block may be partial)::

    scale[i] = offset + codes[i] * absmax[i // block] / 127

bitsandbytes does the same steps (mean subtracted, blocks of 256, an fp32 absmax per block) with its
non-linear "dynamic" 8-bit map; these codes are linear, which bounds every scale's error by the same
``absmax / 254`` within a block, the quantity that matters when a scale multiplies a whole group.
Per 256 groups this stores 256 + 4 bytes instead of 512 (fp16 scales) or 1024 (fp32), plus 4 per layer.

Kernels never see the codes: the layer decodes them once (at quantization and at load) into the
scale dtype the kernels already read, and the codes are what is saved.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_BLOCK = 256  # scales per second-level scale, as bitsandbytes
CODE_MAX = 127  # symmetric int8 codes: -128 is never written
TENSOR_NAMES = ("scale_codes", "scale_absmax", "scale_offset")


def n_blocks(n_scales: int, block: int) -> int:
    return -(-n_scales // block)


def stored_shapes(out_features: int, n_groups: int, block: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the three tensors that replace a layer's ``[out_features, n_groups]`` scales on disk."""
    return {"scale_codes": (out_features, n_groups), "scale_absmax": (n_blocks(out_features * n_groups, block),),
            "scale_offset": (1,)}


def _blocks(flat: torch.Tensor, block: int) -> torch.Tensor:
    """``[M]`` -> ``[ceil(M / block), block]``, zero-padding the last block (zeros change no absmax)."""
    pad = (-flat.numel()) % block
    return torch.nn.functional.pad(flat, (0, pad)).reshape(-1, block)


@dataclass
class DoubleQuantScales:
    """The stored form of one layer's group scales (see the module docstring)."""
    codes: torch.Tensor  # int8 [N, G]
    absmax: torch.Tensor  # float32 [ceil(N * G / block)]
    offset: torch.Tensor  # float32 [1]
    block: int

    @classmethod
    def encode(cls, scales: torch.Tensor, block: int = DEFAULT_BLOCK) -> "DoubleQuantScales":
        flat = scales.detach().float().reshape(-1)
        offset = flat.mean()
        blocks = _blocks(flat - offset, block)
        absmax = blocks.abs().amax(-1)
        # an all-equal block has absmax 0: any positive value decodes it exactly (codes are all 0)
        safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
        codes = torch.round(blocks / safe.unsqueeze(-1) * CODE_MAX).clamp(-CODE_MAX, CODE_MAX)
        codes = codes.reshape(-1)[: flat.numel()].reshape(scales.shape).to(torch.int8)
        return cls(codes.contiguous(), absmax.contiguous(), offset.reshape(1).contiguous(), block)

    def decode(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The scales the kernels read: ``[N, G]`` in ``dtype``, on the codes' device."""
        flat = self.codes.reshape(-1).float()
        steps = _blocks(flat, self.block) * (self.absmax.float() / CODE_MAX).unsqueeze(-1)
        values = steps.reshape(-1)[: flat.numel()] + self.offset.float()
        return values.reshape(self.codes.shape).to(dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(zip(TENSOR_NAMES, (self.codes, self.absmax, self.offset)))

    def problems(self) -> list[str]:
        """Wrong dtypes or values that are not finite (the shapes are checked with the layer's, against
        ``stored_shapes``)."""
        out = [] if self.codes.dtype == torch.int8 else ["scale_codes has the wrong dtype (int8 expected)"]
        out += [f"{name} has the wrong dtype (float32 expected)" for name, t in
                (("scale_absmax", self.absmax), ("scale_offset", self.offset)) if t.dtype != torch.float32]
        if self.block <= 0:
            out.append(f"double quantization block {self.block} is not positive")
        if not out and not self.absmax.is_meta and not (self.absmax.isfinite().all() and self.offset.isfinite().all()):
            out.append("scale_absmax or scale_offset holds a value that is not finite")
        return out

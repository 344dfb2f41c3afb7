"""GGUF's Q4_0 / Q4_1 / Q8_0 blocks <-> our codes, scales and zeros, byte for byte.

Every block covers 32 consecutive weights of one row (ggml's ``QK = 32``), little-endian:

* Q4_0, 18 bytes: fp16 ``d``, 16 bytes ``qs``; weight ``j < 16`` is the low nibble of
  ``qs[j]``, weight ``j + 16`` its high nibble. ``w = (q - 8) * d``: our int4 symmetric
  code ``u = q`` with the fixed zero 8, scale ``d``.
* Q4_1, 20 bytes: fp16 ``d``, fp16 ``m``, 16 bytes ``qs`` as Q4_0. ``w = q * d + m``: our
  int4 with float group minimums (zero_mode "min"), scale ``d``, zeros ``m``.
* Q8_0, 34 bytes: fp16 ``d``, 32 int8 ``q``. ``w = q * d``: our int8 symmetric code
  ``u = q + 128`` with the fixed zero 128.

Rows: llama.cpp stores the Q/K projections' rows in its own rotary order; ``row_permutation``
asks transformers' tensor processor for the reordering, for the importer and the exporter alike.
"""
from __future__ import annotations

import numpy as np
import torch

QK = 32
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
FORMAT_OF = {"Q4_0": "int4_fullrange", "Q4_1": "int4_fullrange", "Q8_0": "int8"}


def _halves(raw: np.ndarray, offset: int) -> torch.Tensor:
    """The fp16 field at byte ``offset`` of every block: ``[rows, blocks]``."""
    return torch.from_numpy(np.ascontiguousarray(raw[:, :, offset:offset + 2]).view(np.float16)[..., 0])


def _nibbles(qs: np.ndarray) -> torch.Tensor:
    """16 bytes per block -> 32 codes per block in weight order (low nibbles first)."""
    return torch.from_numpy(np.concatenate([qs & 0x0F, qs >> 4], axis=-1))


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Our int4 layout (code 2j low nibble of byte j) in uint8 arithmetic: the general
    ``formats.pack_codes`` widens to int64, several times slower on big GGUF tensors."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def decode(raw: np.ndarray, kind: str, n: int, k: int):
    """Raw GGUF tensor bytes ``[n, k / 32 * block]`` -> ``(codes [n, k] uint8, scales [n, k/32]
    fp16, zeros [n, k/32] fp16 | None)``."""
    blocks = np.asarray(raw, dtype=np.uint8).reshape(n, k // QK, BLOCK_BYTES[kind])
    scales = _halves(blocks, 0)
    zeros = None
    if kind == "Q4_0":
        codes = _nibbles(blocks[:, :, 2:])
    elif kind == "Q4_1":
        zeros = _halves(blocks, 2)
        codes = _nibbles(blocks[:, :, 4:])
    elif kind == "Q8_0":
        q = torch.from_numpy(np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8))
        codes = (q.to(torch.int16) + 128).to(torch.uint8)
    else:
        raise ValueError(f"no exact mapping for GGUF type {kind}; exact types: {', '.join(BLOCK_BYTES)}")
    return codes.reshape(n, k), scales.contiguous(), None if zeros is None else zeros.contiguous()


def _half_bytes(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.float16).contiguous().numpy().view(np.uint8).reshape(*x.shape, 2)


def encode(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, kind: str) -> np.ndarray:
    """Inverse of ``decode``: returns uint8 ``[n, k / 32 * block]``."""
    n, k = codes.shape
    c = codes.reshape(n, k // QK, QK).to(torch.uint8)
    parts = [_half_bytes(scales)]
    if kind == "Q4_1":
        parts.append(_half_bytes(zeros))
    if kind in ("Q4_0", "Q4_1"):
        parts.append((c[..., :16] | (c[..., 16:] << 4)).numpy())
    elif kind == "Q8_0":
        parts.append((c.to(torch.int16) - 128).to(torch.int8).numpy().view(np.uint8))
    else:
        raise ValueError(f"cannot encode GGUF type {kind}; exact types: {', '.join(BLOCK_BYTES)}")
    return np.concatenate(parts, axis=-1).reshape(n, -1)


def row_permutation(processor, gguf_name: str, rows: int) -> torch.Tensor | None | str:
    """How transformers reorders this tensor's rows on load (llama.cpp permutes Q/K rows for
    its rotary layout): an index tensor, None for no reordering, or "unsupported" when the
    processor does more than permute rows (then the tensor is dequantized instead)."""
    idx = np.arange(rows, dtype=np.int64).reshape(rows, 1)
    try:
        out = processor.process(weights=idx, name=gguf_name, tensor_key_mapping={}, parsed_parameters={})
    except Exception:  # an architecture-specific processor that needs more context
        return "unsupported"
    perm = np.asarray(out.weights).reshape(-1)
    if out.name != gguf_name or perm.shape != (rows,) or not np.array_equal(np.sort(perm), idx[:, 0]):
        return "unsupported"
    return None if np.array_equal(perm, idx[:, 0]) else torch.from_numpy(perm.copy())

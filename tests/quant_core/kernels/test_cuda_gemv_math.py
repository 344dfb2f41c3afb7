"""The few-row CUDA kernel's int4 arithmetic (``csrc/cuda_gemv.cuh``), replayed on CPU from the
shuffled bytes: raw A operands BASE + u by shift and mask (the weight is the mma's A, x its B),
sums per group against them and against ones, and the fold ``scale * (sum - (BASE + z) * S) (+ min * S)``
with each lane's scales read at ``8g + s`` of the shuffled group row. Equal to ``x @ W^T`` of the reference dequantization,
so the kernel's index math holds whatever the GPU."""
from __future__ import annotations

import pytest
import torch

from quant_core.formats import get_format, pack_codes
from quant_core.kernels.cuda_layout import shuffle_codes, shuffle_groups
from quant_core.packed import PackedWeight

BASE = 128.0  # bf16's magic number; fp16's (1024) differs only in the constant


def raw_unit_a(unit: bytes) -> torch.Tensor:
    """W [64 n, 16 k] of one unit as mma_raw_int4 builds its A operands: lane (g, t), word j gives
    a = (q, q >> 8, q >> 4, q >> 12) & 0x000f000f | MAGIC, the m16n8k16 A fragment {row g, k 2t + h},
    {row g + 8, k 2t + h}, {row g, k 2t + 8 + h}, {row g + 8, k 2t + 8 + h}; A row g + 8i of pair j is
    output column 8(2j + i) + g."""
    w = torch.zeros(64, 16, dtype=torch.float64)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for j in range(4):
            word = int.from_bytes(unit[lane * 16 + 4 * j: lane * 16 + 4 * j + 4], "little")
            for reg, (shift, row8, k8) in enumerate(((0, 0, 0), (8, 1, 0), (4, 0, 1), (12, 1, 1))):
                a = (word >> shift) & 0x000F000F
                for h in range(2):
                    w[8 * (2 * j + row8) + g, 2 * t + 8 * k8 + h] = BASE + ((a >> (16 * h)) & 0xF)
    return w


def fold(acc, c, s_sum, srow, zrow, zero_mode):
    """fold_group for every lane: column 8s + g reads position 8g + s of the shuffled rows."""
    for g in range(8):
        for s in range(8):
            col, pos = 8 * s + g, 8 * g + s
            zz = BASE + {"none": 8.0, "int": float(zrow[pos]) if zrow is not None else 0.0, "min": 0.0}[zero_mode]
            mn = float(zrow[pos]) if zero_mode == "min" else 0.0
            acc[:, col] += float(srow[pos]) * (c[:, col] - zz * s_sum) + mn * s_sum


@pytest.mark.parametrize("zero_mode", ["none", "int", "min"])
@pytest.mark.parametrize("group", [32, 64])
def test_raw_fragments_and_group_fold_give_x_times_w(zero_mode, group):
    torch.manual_seed(0)
    k, n, m = 128, 64, 3
    fmt = get_format("int4")
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    scales = (torch.rand(n, k // group) * 0.02 + 0.001).half()
    zeros = {"none": None, "int": torch.randint(0, 16, (n, k // group), dtype=torch.uint8),
             "min": (-torch.rand(n, k // group) * 0.1).half()}[zero_mode]
    packed = PackedWeight(fmt, k, n, group, pack_codes(codes, 4), scales, zeros)
    units = shuffle_codes(codes, "int4")  # [K/16, 1, 512]
    srows = shuffle_groups(scales.float()).double()
    zrows = None if zeros is None else shuffle_groups(zeros.float() if zero_mode == "min" else zeros).double()
    x = torch.randn(m, k, dtype=torch.float64)
    acc = torch.zeros(m, n, dtype=torch.float64)
    for grp in range(k // group):
        c, s_sum = torch.zeros(m, n, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
        for band in range(grp * group // 16, (grp + 1) * group // 16):
            xa = x[:, band * 16:(band + 1) * 16]
            c += xa @ raw_unit_a(bytes(units[band, 0].tolist())).t()
            s_sum += xa.sum(1)  # the mma against a ones fragment
        fold(acc, c, s_sum, srows[grp], None if zrows is None else zrows[grp], zero_mode)
    want = x @ packed.dequantize(torch.float32).double().t()
    assert torch.allclose(acc, want, rtol=1e-9, atol=1e-9)

"""The few-row CUDA kernel's int4 arithmetic (``csrc/cuda_gemv.cuh``), replayed on CPU from the
shuffled bytes: raw fragments BASE + u by shift and mask, sums per group against them and against
ones, and the fold ``scale * (sum - (BASE + z) * S) (+ min * S)`` with each lane's scales read at
``16t + 8e + s`` of the shuffled group row. Equal to ``x @ W^T`` of the reference dequantization,
so the kernel's index math holds whatever the GPU."""
from __future__ import annotations

import pytest
import torch

from quant_core.formats import get_format, pack_codes
from quant_core.kernels.cuda_layout import shuffle_codes, shuffle_groups
from quant_core.packed import PackedWeight

BASE = 128.0  # bf16's magic number; fp16's (1024) differs only in the constant


def raw_unit_b(unit: bytes) -> torch.Tensor:
    """B [16 k, 64 n] of one unit as mma_raw_int4 builds it: lane (g, t), word j, subtile 2j + f,
    register r = (word >> (8f + 4r)) & 0x000f000f: halves h at k = 2t + 8r + h of column 8(2j + f) + g."""
    b = torch.zeros(16, 64, dtype=torch.float64)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        words = [int.from_bytes(unit[lane * 16 + 4 * j: lane * 16 + 4 * j + 4], "little") for j in range(4)]
        for j in range(4):
            for f in range(2):
                for r in range(2):
                    reg = (words[j] >> (8 * f + 4 * r)) & 0x000F000F
                    for h in range(2):
                        b[2 * t + 8 * r + h, 8 * (2 * j + f) + g] = BASE + ((reg >> (16 * h)) & 0xF)
    return b


def fold(acc, c, s_sum, srow, zrow, zero_mode):
    """fold_group for every lane: column 8s + 2t + e reads position 16t + 8e + s of the shuffled rows."""
    for t in range(4):
        for e in range(2):
            for s in range(8):
                col, pos = 8 * s + 2 * t + e, 16 * t + 8 * e + s
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
            c += xa @ raw_unit_b(bytes(units[band, 0].tolist()))
            s_sum += xa.sum(1)  # the mma against a ones fragment
        fold(acc, c, s_sum, srows[grp], None if zrows is None else zrows[grp], zero_mode)
    want = x @ packed.dequantize(torch.float32).double().t()
    assert torch.allclose(acc, want, rtol=1e-9, atol=1e-9)

"""AWQ (GEMM layout) import/export: bit-exact against AWQ's dequantization, round trip, refusals."""
from __future__ import annotations

import json

import pytest
import torch

from quant_core import QuantConfig, quantize
from quant_core.interop import ExportError, export_awq
from quant_core.interop.awq import layer_from_awq, layer_to_awq
from quant_core.loading import load_model
from quant_core.sources import detect

AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ: nibble i of a word holds column order[i]


def awq_reference_dequant(qweight, qzeros, scales, group_size):
    """AutoAWQ's GEMM dequantization written out: unpack nibbles by shifting, undo the
    interleave, ``(q - z) * s`` with groups along the input dimension. Returns [N, K]."""
    shifts = torch.arange(0, 32, 4)

    def unpack(words):
        nib = (words[:, :, None].to(torch.int64) >> shifts) & 0xF  # [R, C, 8] in pack order
        cols = torch.empty_like(nib)
        cols[:, :, AWQ_PACK_ORDER] = nib  # nibble i -> column order[i]
        return cols.reshape(words.shape[0], -1)

    q, z = unpack(qweight), unpack(qzeros)
    z = z.repeat_interleave(group_size, dim=0)
    s = scales.float().repeat_interleave(group_size, dim=0)
    return ((q - z).float() * s).t()


def test_import_is_bit_exact_to_awq_dequantization():
    gen = torch.Generator().manual_seed(3)
    k, n, gs = 128, 64, 32
    qweight = torch.randint(-2 ** 31, 2 ** 31 - 1, (k, n // 8), generator=gen, dtype=torch.int64).to(torch.int32)
    qzeros = torch.randint(-2 ** 31, 2 ** 31 - 1, (k // gs, n // 8), generator=gen, dtype=torch.int64).to(torch.int32)
    scales = (torch.rand(k // gs, n, generator=gen) * 0.1 + 1e-3).half()
    packed = layer_from_awq(qweight, qzeros, scales, gs)
    assert torch.equal(packed.dequantize(), awq_reference_dequant(qweight, qzeros, scales, gs))
    out = layer_to_awq(packed)
    assert torch.equal(out["qweight"], qweight) and torch.equal(out["qzeros"], qzeros)
    assert torch.equal(out["scales"], scales)


@pytest.mark.parametrize("scheme", ["asym", "sym"])
def test_round_trip_keeps_logits_exactly(tiny_llama, tmp_path, scheme):
    quantize(tiny_llama, QuantConfig(weight_dtype="int4", group_size=32, scheme=scheme, head_weight_dtype=None))
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny_llama(ids).logits
    export_awq(tiny_llama, None, tmp_path / "awq")
    qc = json.loads((tmp_path / "awq" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["version"] == "gemm" and qc["zero_point"] is True
    assert detect(str(tmp_path / "awq")) == "awq"
    model, _ = load_model(tmp_path / "awq")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)


@pytest.mark.parametrize("config,match", [
    (dict(weight_dtype="int8", group_size=32), "int8 is not a 4-bit integer format"),
    (dict(weight_dtype="nf4", group_size=32), "nf4 is not a 4-bit integer format"),
    (dict(weight_dtype="int4", group_size=-1), "group_size -1"),
])
def test_refuses_what_awq_cannot_hold(tiny_llama, tmp_path, config, match):
    quantize(tiny_llama, QuantConfig(**config))
    with pytest.raises(ExportError, match=match + r".*AWQ \(GEMM\) can hold: 4-bit int"):
        export_awq(tiny_llama, None, tmp_path / "x")

"""GGUF: block codecs bit-exact against gguf-py's reference dequantization, export read back by
transformers' GGUF loader and by our packed importer, refusals, and the embedded SmolLM2 Q4_1
read straight into int4 asym g32."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from quant_core import QuantConfig, quantize
from quant_core.formats import FORMATS, pack_codes
from quant_core.interop import ExportError, export_gguf
from quant_core.interop import _gguf_blocks as blocks
from quant_core.modules import QuantLinear
from quant_core.packed import PackedWeight


def random_blocks(kind: str, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Random GGUF blocks with finite fp16 scale (and min) fields."""
    rng = np.random.default_rng(seed)
    nb = k // 32
    raw = rng.integers(0, 256, size=(rows, nb, blocks.BLOCK_BYTES[kind]), dtype=np.uint8)
    raw[:, :, 0:2] = rng.uniform(1e-4, 0.1, (rows, nb)).astype(np.float16)[..., None].view(np.uint8)
    if kind == "Q4_1":
        raw[:, :, 2:4] = rng.uniform(-1, 1, (rows, nb)).astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_blocks_decode_bit_exact_to_gguf_reference(kind):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    rows, k = 16, 256
    raw = random_blocks(kind, rows, k)
    codes, scales, zeros = blocks.decode(raw, kind, rows, k)
    fmt = FORMATS[blocks.FORMAT_OF[kind]]
    packed = PackedWeight(fmt, k, rows, 32, pack_codes(codes, fmt.bits), scales, zeros)
    reference = torch.from_numpy(dequantize(raw, getattr(GGMLQuantizationType, kind)).astype(np.float32))
    assert packed.zero_mode == ("min" if kind == "Q4_1" else "none")
    assert torch.equal(packed.dequantize(), reference)
    assert np.array_equal(blocks.encode(codes, scales, zeros, kind), raw)  # and back, byte for byte
    if kind != "Q8_0":
        assert torch.equal(blocks.pack_int4(codes), pack_codes(codes, 4))


def test_export_reads_back_exactly_in_transformers_and_packed(tiny_llama_320, tiny_tokenizer, tmp_path,
                                                             monkeypatch):
    """One file with all three types: int4 sym -> Q4_0, a layer with float minimums -> Q4_1,
    an int8 layer -> Q8_0."""
    from transformers import LlamaForCausalLM

    from quant_core.algorithms.rtn import rtn
    from quant_core.interop import load_gguf_packed
    from quant_core.model_surgery import replace_linear

    monkeypatch.setenv("QUANTLLM_CACHE", str(tmp_path / "cache"))
    model = tiny_llama_320
    int8 = QuantConfig(weight_dtype="int8", group_size=32)
    quantize(model, QuantConfig(weight_dtype="int4", group_size=32, scheme="sym",
                                modules_to_not_convert=["lm_head", "layers.0.mlp.down_proj"], head_weight_dtype=None))
    down = model.model.layers[0].mlp.down_proj
    replace_linear(model, "model.layers.0.mlp.down_proj", rtn(down.weight, int8).pack(int8), None, int8)
    up = model.model.layers[1].mlp.up_proj
    up.zeros = (torch.randn(up.out_features, up.in_features // 32, generator=torch.Generator().manual_seed(0))
                * 0.05).half()
    path = export_gguf(model, tiny_tokenizer, tmp_path / "tiny.gguf", progress=False)
    # transformers' GGUF loader (gguf-py dequantization + llama.cpp row order undone) sees our weights
    theirs = LlamaForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            assert torch.equal(theirs.get_submodule(name).weight, m.packed.dequantize()), name
    # our packed importer gets the very same packed tensors back
    ours, tokenizer = load_gguf_packed(str(path))
    assert set(ours.config.quantllm_import["types"]) == {"Q4_0", "Q4_1", "Q8_0"}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            back = ours.get_submodule(name)
            assert torch.equal(back.qweight, m.qweight) and torch.equal(back.scales, m.scales), name
            assert (back.zeros is None) == (m.zeros is None)
    ids = torch.tensor([tokenizer("the lazy fox").input_ids])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, model(ids).logits)
    # an imported GGUF model saves and reloads as a quantllm checkpoint (float minimums included)
    from quant_core.serialization import load_quantized, save_quantized
    again, _ = load_quantized(save_quantized(ours, tokenizer, tmp_path / "saved"))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


@pytest.mark.parametrize("config,match", [
    (dict(weight_dtype="nf4", group_size=32), "nf4, symmetric, group_size 32"),
    (dict(weight_dtype="int4", group_size=64), "int4_fullrange, symmetric, group_size 64"),
    (dict(weight_dtype="int4", group_size=32, scheme="asym"), "integer zero points"),
])
def test_refuses_what_gguf_cannot_hold_exactly(tiny_llama, tmp_path, config, match):
    quantize(tiny_llama, QuantConfig(**config))
    with pytest.raises(ExportError, match=match + r".*GGUF can hold: .*Q4_0.*Q4_1.*Q8_0"):
        export_gguf(tiny_llama, object(), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.slow
def test_embedded_q4_1_reads_into_int4_asym_g32_with_the_same_greedy_output(smollm2):
    from quant_core.loading import embedded_model_path, load_model

    float_model, tokenizer = smollm2  # transformers' dequantization of the same file
    packed, _ = load_model(str(embedded_model_path()) + "#packed")
    layers = {n: m for n, m in packed.named_modules() if isinstance(m, QuantLinear)}
    assert len(layers) == 30 * 7
    for name, m in layers.items():
        assert (m.weight_dtype, m.group_size, m.packed.zero_mode) == ("int4_fullrange", 32, "min")
        assert torch.equal(m.packed.dequantize(), float_model.get_submodule(name).weight), name
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        want = float_model.generate(ids, max_new_tokens=16, do_sample=False)
        got = packed.generate(ids, max_new_tokens=16, do_sample=False)
    assert torch.equal(got, want)

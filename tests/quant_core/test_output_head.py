"""QuantConfig.head_weight_dtype: quantize() packs the output head (and a tied embedding reads its
rows), the checkpoint keeps it packed, and a reload computes the same logits bit for bit."""
import json

import pytest
import torch
import transformers

from quant_core import QuantConfig, QuantLinear, quantize
from quant_core.cli import main
from quant_core.errors import CheckpointError, ConfigError
from quant_core.inspect import describe
from quant_core.interop import export_gptq, load_gptq
from quant_core.output_head import QuantEmbedding
from quant_core.serialization import load_quantized, save_quantized

IDS = torch.tensor([[1, 5, 9, 200, 17, 3, 255]])


def tiny(tied: bool):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(config).eval()


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("head,group", [("int8", -1), ("int4_fullrange", 32)])
@pytest.mark.parametrize("tied", [True, False])
def test_quantize_packs_the_head_and_reload_is_bit_exact(tmp_path, head, group, tied):
    model = tiny(tied)
    float_embed = model.model.embed_tokens.weight.detach().clone()
    model = quantize(model, QuantConfig(group_size=32, head_weight_dtype=head), progress=False)
    assert isinstance(model.lm_head, QuantLinear) and model.lm_head.weight_dtype == head
    assert model.lm_head.group_size == group
    embed = model.model.embed_tokens
    assert isinstance(embed, QuantEmbedding) == tied and (not tied or embed.table is model.lm_head)
    want = logits(model)
    path = save_quantized(model, None, tmp_path / "q")
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    assert qc["head_weight_dtype"] == head and qc["layers"]["lm_head"]["weight_dtype"] == head
    assert qc.get("input_embedding") == ("lm_head" if tied else None)
    loaded, _ = load_quantized(path)
    assert torch.equal(loaded.lm_head.qweight, model.lm_head.qweight)
    assert torch.equal(loaded.lm_head.scales, model.lm_head.scales)
    assert isinstance(loaded.model.embed_tokens, QuantEmbedding) == tied
    if not tied:  # the float embedding is saved as it was
        assert torch.equal(loaded.model.embed_tokens.weight, float_embed)
    assert torch.equal(logits(loaded), want)
    with open(path / "model.safetensors", "rb") as f:  # no float vocab x hidden matrix was written when tied
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert ("model.embed_tokens.weight" in header) != tied


def test_default_head_is_int8_none_keeps_it_float_and_older_configs_load_as_float_heads():
    model = quantize(tiny(True), QuantConfig(group_size=32), progress=False)
    assert model.lm_head.weight_dtype == "int8" and "output head: int8, group -1" in describe(model)
    model = quantize(tiny(True), QuantConfig(group_size=32, head_weight_dtype=None), progress=False)
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight
    assert "output head: float" in describe(model)
    old = {k: v for k, v in QuantConfig().to_dict().items() if k not in ("head_weight_dtype", "version")}
    assert QuantConfig.from_dict({**old, "version": 2}).head_weight_dtype is None  # saved by an older quantllm
    assert QuantConfig.from_dict(old).head_weight_dtype == "int8"  # a user's dict: today's defaults


def test_head_already_in_the_main_format_is_left_to_it():
    model = quantize(tiny(False), QuantConfig(group_size=32, modules_to_not_convert=[], head_weight_dtype="int8"),
                     progress=False)
    assert model.lm_head.weight_dtype == "int4_fullrange"


def test_bad_head_settings_fail_before_quantizing():
    with pytest.raises(ConfigError, match="head_weight_dtype"):
        QuantConfig(head_weight_dtype="int5")
    assert QuantConfig(head_weight_dtype="none").head_weight_dtype is None  # --option head_weight_dtype=none
    model = tiny(True)
    only_down = ["lm_head", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]  # 128 columns: fits
    with pytest.raises(ConfigError, match="lm_head"):  # the head's 64 input columns: groups of 128 do not fit
        quantize(model, QuantConfig(group_size=128, head_weight_dtype="int4", modules_to_not_convert=only_down))
    assert type(model.lm_head) is torch.nn.Linear


def test_info_shows_the_head(tmp_path, tiny_hf_dir, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_hf_dir), "-o", str(out), "--group-size", "32",
                 "--option", "head_weight_dtype=int8"]) == 0
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert '"head_weight_dtype": "int8"' in text and "output head: int8, group -1" in text


def test_corrupt_embedding_source_is_refused(tmp_path):
    model = quantize(tiny(True), QuantConfig(group_size=32, head_weight_dtype="int8"), progress=False)
    path = save_quantized(model, None, tmp_path / "q")
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["input_embedding"] = "model.layers.0.mlp.up_proj"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="input_embedding"):
        load_quantized(path, verify=False)


@pytest.mark.parametrize("tied", [True, False])
def test_gptq_export_writes_the_packed_head_as_float(tmp_path, tied):
    """GPTQ holds one format for every layer: the int8 head (and a tied embedding) go out dequantized."""
    model = quantize(tiny(tied), QuantConfig(weight_dtype="int4", group_size=32), progress=False)
    export_gptq(model, None, tmp_path / "g")
    exported, _ = load_gptq(tmp_path / "g")
    assert type(exported.lm_head) is torch.nn.Linear and type(exported.model.embed_tokens) is torch.nn.Embedding
    head = model.lm_head.packed.dequantize(torch.float32)
    assert torch.equal(exported.lm_head.weight, head)
    if tied:
        assert torch.equal(exported.model.embed_tokens.weight, head)
    assert torch.equal(exported.model.layers[0].mlp.up_proj.qweight, model.model.layers[0].mlp.up_proj.qweight)
    assert torch.allclose(logits(exported), logits(model), rtol=0, atol=1e-4)


def test_tied_embedding_follows_a_replaced_head():
    """Tied as transformers ties: the embedding reads whatever head the model has now."""
    model = quantize(tiny(True), QuantConfig(group_size=32), progress=False)
    float_head = torch.nn.Linear(64, 256, bias=False)
    model.set_output_embeddings(float_head)
    ids = torch.tensor([[3, 7, 255]])
    assert torch.equal(model.model.embed_tokens(ids), float_head.weight.detach()[ids])

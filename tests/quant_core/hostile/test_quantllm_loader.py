"""The quantllm loader refuses, with one CheckpointError each, every checkpoint it cannot
trust or whose pieces disagree (issue 17, part 2); verify=False skips only the checksums."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from quant_core.checkpoint_io import architecture_class
from quant_core.errors import CheckpointError
from quant_core.loading import load_model
from quant_core.serialization import load_quantized

from hostile_helpers import edit_config, logits_of, rewrite_weights

QC = "quantization_config"
LAYER = "model.layers.0.self_attn.q_proj"


def _flip_last_weight_byte(path):
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))


def test_removing_checksums_does_not_switch_the_check_off(ckpt):
    path, ref = ckpt
    edit_config(path, lambda c: c[QC].pop("checksums"))
    _flip_last_weight_byte(path)
    with pytest.raises(CheckpointError, match="no checksums.*verify=False"):
        load_model(path)
    model, _ = load_model(path, verify=False)  # the user's explicit choice
    assert not torch.equal(logits_of(model), ref)


def test_checksums_cover_the_manifest(ckpt):
    path, _ = ckpt
    edit_config(path, lambda c: c[QC]["layers"][LAYER].update(weight_dtype="nf4"))  # same shapes as int4
    with pytest.raises(CheckpointError, match="config.json was modified"):
        load_model(path)


@pytest.mark.parametrize("edit", [
    lambda c: c[QC].update(group_size=64),
    lambda c: c[QC].update(scale_dtype="bf16"),
    lambda c: c.update(rms_norm_eps=0.1),  # a model setting: changes logits silently if unchecked
])
def test_checksums_cover_the_whole_config(ckpt, edit):
    path, _ = ckpt
    edit_config(path, edit)
    with pytest.raises(CheckpointError, match="config.json was modified"):
        load_model(path)


def test_tokenizer_files_are_covered_and_unlisted_ones_refused(ckpt):
    path, _ = ckpt
    (path / "special_tokens_map.json").write_text("{}")
    with pytest.raises(CheckpointError, match="special_tokens_map.json.*checksums do not cover"):
        load_model(path)
    os.remove(path / "special_tokens_map.json")
    tok = path / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"<pad>"', '"<PAD>"'))
    with pytest.raises(CheckpointError, match="tokenizer.json does not match"):
        load_model(path)


def test_header_dtypes_are_checked_against_the_manifest(ckpt):
    path, _ = ckpt
    rewrite_weights(path, lambda s: s.update({f"{LAYER}.zeros": s[f"{LAYER}.zeros"].to(torch.int8)}))
    with pytest.raises(CheckpointError, match=r"q_proj.zeros is stored as I8 but the config says U8"):
        load_quantized(path, verify=False)


def test_aliases_may_not_replace_a_real_tensor(ckpt):
    path, _ = ckpt
    rewrite_weights(path, fn_metadata=lambda m: m.update(aliases=json.dumps({"model.norm.weight": "model.layers.0.input_layernorm.weight"})))
    with pytest.raises(CheckpointError, match="would replace a stored tensor"):
        load_quantized(path, verify=False)


def test_aliases_must_point_at_stored_tensors(ckpt):
    path, _ = ckpt
    rewrite_weights(path, fn_metadata=lambda m: m.update(aliases=json.dumps({"extra.alias": "nothing.here"})))
    with pytest.raises(CheckpointError, match="not stored"):
        load_quantized(path, verify=False)


def test_architectures_resolve_only_to_model_classes(ckpt):
    path, _ = ckpt
    edit_config(path, lambda c: c.update(architectures=["pipeline"]))
    with pytest.raises(CheckpointError, match="no transformers model class"):
        load_quantized(path, verify=False)
    config = type("C", (), {"architectures": ["AutoTokenizer", "pipeline", "__class__"]})()
    with pytest.raises(CheckpointError):
        architecture_class(config)


def test_quantllm_folder_without_quantization_config_is_refused(ckpt):
    path, _ = ckpt
    edit_config(path, lambda c: c.pop(QC))
    with pytest.raises(CheckpointError, match="packed.*no quantization_config"):
        load_model(path)


@pytest.mark.parametrize("content", ["[]", "[1]", '"text"', "{not json"])
def test_config_json_that_is_not_an_object(ckpt, content):
    path, _ = ckpt
    (path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(path)


def test_string_version_is_a_checkpoint_error(ckpt):
    path, _ = ckpt
    edit_config(path, lambda c: c[QC].update(version="2"))
    with pytest.raises(CheckpointError, match="version"):
        load_model(path, verify=False)


@pytest.mark.parametrize("key", ["bias", "zero_mode", "in_features"])
def test_manifest_entry_missing_a_key(ckpt, key):
    path, _ = ckpt
    edit_config(path, lambda c: c[QC]["layers"][LAYER].pop(key))
    with pytest.raises(CheckpointError, match=f"{key} is missing"):
        load_model(path, verify=False)


def test_manifest_layer_that_the_model_lacks(ckpt):
    path, _ = ckpt
    edit_config(path, lambda c: c[QC]["layers"].update({"model.nothing": c[QC]["layers"][LAYER]}))
    with pytest.raises(CheckpointError):
        load_model(path, verify=False)


def test_saved_files_follow_the_umask(saved_ckpt, tmp_path):
    from quant_core.serialization import save_quantized

    model, _ = load_quantized(saved_ckpt[0])
    old = os.umask(0o027)
    try:
        out = save_quantized(model, None, tmp_path / "u")
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == oct(0o750)
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {oct(0o640)}


# ---------------------------------------------------------------- plain Hugging Face folders
class _Payload:
    """Unpickling this creates a file: proof that a .bin was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def hf_dir(tmp_path):
    from quant_core.testing import byte_tokenizer, tiny_llama_lm

    path = tmp_path / "hf"
    tiny_llama_lm().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def test_pickled_bin_only_folder_is_refused_never_unpickled(hf_dir, tmp_path):
    marker = tmp_path / "unpickled"
    os.remove(hf_dir / "model.safetensors")
    with open(hf_dir / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*safetensors"):
        load_model(hf_dir)
    assert not marker.exists()


def test_folder_without_tokenizer_config(hf_dir):
    os.remove(hf_dir / "tokenizer_config.json")
    os.remove(hf_dir / "tokenizer.json")
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_model(hf_dir)


def test_plain_folder_with_packed_weights_is_refused(hf_dir, saved_ckpt):
    import shutil
    shutil.copy(saved_ckpt[0] / "model.safetensors", hf_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match="packed"):
        load_model(hf_dir)


def test_cli_no_verify_is_the_explicit_way_past_missing_checksums(ckpt, capsys):
    from quant_core.cli import main

    path, _ = ckpt
    edit_config(path, lambda c: c[QC].pop("checksums"))
    assert main(["info", str(path)]) != 0
    assert "--no-verify" in capsys.readouterr().err
    assert main(["info", str(path), "--no-verify"]) == 0


def test_from_packed_checks_shapes_dtypes_and_indices():
    from quant_core import QuantLinear
    from quant_core.formats import FORMATS
    from quant_core.packed import PackedWeight

    fmt = FORMATS["int4_fullrange"]
    good = dict(fmt=fmt, in_features=64, out_features=8, group_size=32, qweight=torch.zeros(8, 32, dtype=torch.uint8),
                scales=torch.ones(8, 2, dtype=torch.float16))
    QuantLinear.from_packed(PackedWeight(**good), None)
    bad = [dict(scales=torch.ones(8, 4, dtype=torch.float16)),  # groups of 16, not 32
           dict(qweight=torch.zeros(8, 16, dtype=torch.uint8)),  # 2-bit rows under a 4-bit format
           dict(qweight=torch.zeros(8, 32, dtype=torch.int8)),
           dict(zeros=torch.full((8, 2), 16, dtype=torch.uint8)),  # past the largest 4-bit code
           dict(g_idx=torch.full((64,), 2, dtype=torch.int32))]  # group 2 of 0..1: reads past the scales
    for change in bad:
        with pytest.raises(CheckpointError, match="do not fit"):
            QuantLinear.from_packed(PackedWeight(**{**good, **change}), None)
    with pytest.raises(CheckpointError, match="bias"):
        QuantLinear.from_packed(PackedWeight(**good), torch.zeros(7))

"""GPTQ: lower output error than RTN in every format, exact lazy batching, act_order, errors."""
import copy
import logging

from pathlib import Path

import pytest
import torch
from torch import nn

from quant_core import QuantConfig, QuantLinear, quantize
from quant_core.algorithms.gptq import gptq, inverse_cholesky
from quant_core.algorithms.rtn import rtn
from quant_core.blocks import UnsupportedModelError
from quant_core.calibration import CalibrationError
from reload_support import reloaded_logits

SETTINGS = [("int4_fullrange", "sym", 64), ("int4_fullrange", "asym", 64), ("int4_clip", "sym", 64),
            ("int4_fullrange", "asym", -1), ("int3", "asym", 64), ("int2", "asym", 64),
            ("nf4", "sym", 64), ("fp4_e2m1", "sym", 64), ("int8", "sym", 64)]


def output_error(w, w_hat, x):
    return torch.linalg.norm(x @ (w - w_hat).T).item()


def test_hessian_is_the_running_mean_of_2xxT(layer):
    _, x, h = layer
    torch.testing.assert_close(h, 2 * x.T @ x / x.shape[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype,scheme,group_size", SETTINGS)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_below_rtn_in_every_format(layer, dtype, scheme, group_size, act_order):
    w, x, h = layer
    cfg = QuantConfig(algorithm="gptq", weight_dtype=dtype, scheme=scheme, group_size=group_size,
                      act_order=act_order)
    w_gptq = gptq(w, h, cfg).pack(cfg).dequantize()
    w_rtn = rtn(w, cfg).pack(cfg).dequantize()
    assert output_error(w, w_gptq, x) < 0.8 * output_error(w, w_rtn, x)


def test_lazy_batches_give_the_same_result_as_one_block(layer):
    """Block boundaries that cut groups in half (48 vs 64) must not change anything."""
    w, _, h = layer
    for act_order in (False, True):
        one = gptq(w, h, QuantConfig(algorithm="gptq", group_size=64, block_size=192, act_order=act_order))
        lazy = gptq(w, h, QuantConfig(algorithm="gptq", group_size=64, block_size=48, act_order=act_order))
        assert (one.codes != lazy.codes).float().mean() < 1e-3
        torch.testing.assert_close(one.scales, lazy.scales, rtol=1e-3, atol=1e-6)


def test_act_order_records_groups_and_static_groups_does_not(layer):
    w, _, h = layer
    dynamic = gptq(w, h, QuantConfig(algorithm="gptq", group_size=64, act_order=True))
    static = gptq(w, h, QuantConfig(algorithm="gptq", group_size=64, act_order=True, static_groups=True))
    assert dynamic.g_idx is not None and static.g_idx is None
    assert torch.bincount(dynamic.g_idx.long()).tolist() == [64, 64, 64]
    assert not torch.equal(dynamic.g_idx.long(), torch.arange(192) // 64)  # columns were reordered
    # the recorded g_idx is what dequantization needs: reloading reproduces GPTQ's own result
    cfg = QuantConfig(algorithm="gptq", group_size=64, act_order=True)
    packed = dynamic.pack(cfg)
    assert packed.g_idx is not None
    w_hat = packed.dequantize()
    assert output_error(w, w_hat, layer[1]) < output_error(w, rtn(w, cfg).pack(cfg).dequantize(), layer[1])


def test_damping_is_raised_when_cholesky_fails(caplog):
    h = torch.eye(8)
    h[0, 0] = -0.2  # mean diagonal 0.85: 1 % damping leaves it indefinite, 10 % does not
    with caplog.at_level(logging.WARNING, logger="quant_core"):
        upper = inverse_cholesky(h, 0.01)
    assert "retrying" in caplog.text
    assert torch.isfinite(upper).all()
    with pytest.raises(torch.linalg.LinAlgError, match="singular"):
        inverse_cholesky(-torch.eye(8) * 100 + torch.diag(torch.arange(8.0)), 0.01)


def test_dead_inputs_and_shape_errors():
    w = torch.randn(4, 16)
    h = torch.eye(16)
    h[3, 3] = 0  # an input that was always zero
    out = gptq(w, h, QuantConfig(group_size=16))
    assert torch.isfinite(out.scales).all()
    with pytest.raises(ValueError, match="does not match"):
        gptq(w, torch.eye(8), QuantConfig(group_size=16))


def _ids(n=4, t=32, vocab=256):
    return list(torch.randint(3, vocab, (n, t), generator=torch.Generator().manual_seed(1)).split(2))


@pytest.mark.parametrize("true_sequential,act_order", [(True, False), (True, True), (False, False)])
def test_model_gptq_beats_rtn_and_replaces_every_linear(tiny_llama, true_sequential, act_order):
    ids = torch.cat(_ids())
    with torch.no_grad():
        ref = tiny_llama(ids).logits
    rtn_model = quantize(copy.deepcopy(tiny_llama), QuantConfig(group_size=32, head_weight_dtype=None), progress=False)
    cfg = QuantConfig(algorithm="gptq", group_size=32, true_sequential=true_sequential, act_order=act_order, head_weight_dtype=None)
    model = quantize(copy.deepcopy(tiny_llama), cfg, calibration=_ids(), progress=False)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 14
    assert not any(type(m) is nn.Linear for n, m in model.named_modules() if n != "lm_head")
    assert model.config.quantization_config["algorithm"] == "gptq"
    with torch.no_grad():
        err = (model(ids).logits - ref).pow(2).mean()
        err_rtn = (rtn_model(ids).logits - ref).pow(2).mean()
    assert err < err_rtn


def test_act_order_model_saves_reloads_and_runs(tiny_llama, tmp_path):
    cfg = QuantConfig(algorithm="gptq", group_size=32, act_order=True)
    model = quantize(copy.deepcopy(tiny_llama), cfg, calibration=_ids(), progress=False)
    assert model.model.layers[0].mlp.down_proj.g_idx is not None
    expected, got, again = reloaded_logits(model, tmp_path / "q", torch.cat(_ids()))
    assert again.model.layers[0].mlp.down_proj.g_idx is not None
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_excluded_modules_stay_float(tiny_llama):
    cfg = QuantConfig(algorithm="gptq", group_size=32, modules_to_not_convert=["lm_head", "down_proj"])
    model = quantize(tiny_llama, cfg, calibration=_ids(), progress=False)
    assert type(model.model.layers[1].mlp.down_proj) is nn.Linear
    assert isinstance(model.model.layers[1].mlp.up_proj, QuantLinear)


def test_error_paths_raise_before_any_work(tiny_llama):
    with pytest.raises(CalibrationError, match="tokenizer"):
        quantize(tiny_llama, QuantConfig(algorithm="gptq", group_size=32), progress=False)
    with pytest.raises(CalibrationError, match="2-D integer"):
        quantize(tiny_llama, QuantConfig(algorithm="gptq", group_size=32), calibration=[torch.randn(2, 8)],
                 progress=False)
    assert not any(isinstance(m, QuantLinear) for m in tiny_llama.modules())

    class Bert(nn.Module):
        config = type("C", (), {"model_type": "bert"})()

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
    with pytest.raises(UnsupportedModelError, match="algorithm='rtn'"):
        quantize(Bert(), QuantConfig(algorithm="gptq", group_size=8), calibration=_ids(), progress=False)


@pytest.mark.slow
def test_smollm2_gptq_int4_beats_rtn_on_a_slice_of_text(smollm2):
    from quant_core.calibration import calibration_batches
    from quant_core.evaluation import read_eval_text

    model, tok = smollm2
    model = copy.deepcopy(model)
    # The first 6 of 30 blocks keep the test within CI's time on 2 cores; a truncated model's
    # perplexity means nothing, so the measure is the error of its last hidden state on real text.
    model.model.layers = model.model.layers[:6]
    model.config.num_hidden_layers = 6
    path = Path(__file__).resolve().parents[4] / "shared" / "data" / "wikitext2-test.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found (the shared data folder sits beside the repository)")
    text = read_eval_text(path)[:20000]
    cfg = dict(weight_dtype="int4_fullrange", group_size=128, scheme="sym")
    batches = calibration_batches(tok, n_samples=8, seqlen=256, batch_size=4)
    ids = tok(text, return_tensors="pt").input_ids[:, :512]
    with torch.no_grad():
        reference = model.model(ids).last_hidden_state
        error = {}
        for algorithm in ("rtn", "gptq"):
            q = quantize(copy.deepcopy(model), QuantConfig(algorithm=algorithm, **cfg),
                         calibration=batches, progress=False)
            error[algorithm] = (q.model(ids).last_hidden_state - reference).pow(2).mean().item()
    assert 0 < error["gptq"] < error["rtn"], error


def test_cli_quantize_gptq_with_the_shipped_calibration_text(tiny_llama, tmp_path):
    """`quantllm quantize --algorithm gptq` on a local model: default calibration, saved and reloadable."""
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from quant_core.calibration import DEFAULT_CALIBRATION_FILE
    from quant_core.cli import main
    from quant_core.serialization import load_quantized

    words = Counter(DEFAULT_CALIBRATION_FILE.read_text(encoding="utf-8").split()).most_common(250)
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, (w, _) in enumerate(words)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    src = tmp_path / "tiny"
    tiny_llama.save_pretrained(src)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(src)
    rc = main(["quantize", str(src), "-o", str(tmp_path / "q"), "--algorithm", "gptq", "--group-size", "32",
               "--option", "n_samples=4", "--option", "seqlen=32"])
    assert rc in (0, None)
    model, _ = load_quantized(tmp_path / "q")
    assert model.config.quantization_config["algorithm"] == "gptq"
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantLinear)

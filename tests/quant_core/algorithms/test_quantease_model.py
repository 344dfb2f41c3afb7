"""QuantEase on whole models and with outliers: outliers lower the layer loss by taking their
share, the calibrated model beats RTN, and outlier checkpoints reload to the same logits (also
from the command line)."""
import copy
from collections import Counter

import pytest
import torch

from quant_core import QuantConfig, QuantLinear, quantize
from quant_core.algorithms.gptq import Hessian
from quant_core.algorithms.quantease import quantease
from quant_core.calibration import DEFAULT_CALIBRATION_FILE
from quant_core.cli import main
from quant_core.inspect import describe
from quant_core.primitives import output_error
from quant_core.serialization import load_quantized, save_quantized


@pytest.fixture(scope="module")
def layer():
    g = torch.Generator().manual_seed(3)
    k, n = 128, 40
    x = torch.randn(800, k, generator=g) @ (0.3 * torch.randn(k, k, generator=g) + torch.eye(k))
    h = Hessian(k)
    h.add(x)
    w = torch.randn(n, k, generator=g)
    w[torch.rand(n, k, generator=g) < 0.01] *= 6  # a few large weights, as trained layers have
    return w, h.matrix


def _loss(w, result, config, h):
    return output_error(w - result.pack(config).dequantize(), h).item()


@pytest.mark.parametrize("structure,fraction", [("unstructured", 0.01), ("columns", 0.03)])
def test_outliers_take_their_share_and_lower_the_loss(layer, structure, fraction):
    w, h = layer
    plain = QuantConfig(algorithm="quantease", weight_dtype="int3", scheme="asym", group_size=64, num_iter=6)
    cfg = plain.model_copy(update={"outlier_fraction": fraction, "outlier_structure": structure})
    result = quantease(w, h, cfg)
    expected = round(w.numel() * fraction) if structure == "unstructured" else round(w.shape[1] * fraction)
    assert result.outliers is not None and result.outliers.count == expected
    assert _loss(w, result, cfg, h) < 0.9 * _loss(w, quantease(w, h, plain), plain, h)


def _ids(n=4, t=32, vocab=256):
    return list(torch.randint(3, vocab, (n, t), generator=torch.Generator().manual_seed(1)).split(2))


def _logit_error(model, reference, ids):
    with torch.no_grad():
        return (model(ids).logits - reference).pow(2).mean().item()


def test_model_quantease_beats_rtn_and_outliers_reload_exactly(tiny_llama, tmp_path):
    ids = torch.cat(_ids())
    with torch.no_grad():
        reference = tiny_llama(ids).logits
    # a float head: the comparison is on the linears, and every quantized one keeps outliers
    rtn = quantize(copy.deepcopy(tiny_llama), QuantConfig(weight_dtype="int3", group_size=32, head_weight_dtype=None),
                   progress=False)
    base = dict(weight_dtype="int3", group_size=32, num_iter=4, head_weight_dtype=None)
    ours = quantize(copy.deepcopy(tiny_llama), QuantConfig(algorithm="quantease", **base), calibration=_ids(),
                    progress=False)
    with_outliers = quantize(copy.deepcopy(tiny_llama), QuantConfig(algorithm="quantease", outlier_fraction=0.02,
                                                                      **base), calibration=_ids(), progress=False)
    assert sum(isinstance(m, QuantLinear) for m in ours.modules()) == 14
    assert _logit_error(ours, reference, ids) < _logit_error(rtn, reference, ids)
    assert all(m.outliers is not None for m in with_outliers.modules() if isinstance(m, QuantLinear))
    save_quantized(with_outliers, None, tmp_path / "q")
    again, _ = load_quantized(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, with_outliers(ids).logits)
    assert again.config.quantization_config["outlier_fraction"] == 0.02


def test_cli_quantize_quantease_with_outliers_and_the_shipped_calibration_text(tiny_llama, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers  # optional: only the tokenizer build needs them
    from transformers import PreTrainedTokenizerFast

    words = Counter(DEFAULT_CALIBRATION_FILE.read_text(encoding="utf-8").split()).most_common(250)
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, (w, _) in enumerate(words)}}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    src = tmp_path / "tiny"
    tiny_llama.save_pretrained(src)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(src)
    rc = main(["quantize", str(src), "-o", str(tmp_path / "q"), "--algorithm", "quantease", "--group-size", "32",
               "--option", "n_samples=4", "--option", "seqlen=32", "--option", "num_iter=3",
               "--option", "outlier_fraction=0.01", "--option", "outlier_structure=columns"])
    assert rc in (0, None)
    model, _ = load_quantized(tmp_path / "q")
    assert model.config.quantization_config["algorithm"] == "quantease"
    assert "outliers: columns" in describe(model)

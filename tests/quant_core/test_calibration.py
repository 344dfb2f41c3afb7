"""Calibration text sources and window sampling."""
import hashlib
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from quant_core.calibration import (DEFAULT_CALIBRATION_FILE, CalibrationError, calibration_batches,
                                    load_calibration_texts, sample_windows)
from quant_core.config import QuantConfig


@pytest.fixture(scope="module")
def word_tokenizer():
    """A real fast tokenizer (word level) built offline from the shipped text's vocabulary."""
    words = sorted(set(DEFAULT_CALIBRATION_FILE.read_text(encoding="utf-8").split()))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_default_is_clean_validation_prose_and_model_text_not_the_test_split():
    text = load_calibration_texts()[0]
    assert 400_000 < len(text.encode()) < 700_000
    assert "Homarus gammarus, known as the European lobster" in text  # WikiText-2 *valid*, detokenized
    assert "<unk>" not in text and " @-@ " not in text and " , " not in text[:278_000]
    test_split = (Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext2-test.txt")
    if test_split.exists():  # no line of the evaluation split leaks into calibration
        first_test_line = next(line for line in test_split.read_text(encoding="utf-8").split("\n") if len(line) > 200)
        words = first_test_line.split()
        phrase = next(" ".join(words[i:i + 6]) for i in range(len(words)) if all(w.isalpha() for w in words[i:i + 6]))
        assert phrase not in text
    readme = (DEFAULT_CALIBRATION_FILE.parent / "README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "Merity" in readme and "SmolLM2" in readme
    assert hashlib.sha256(DEFAULT_CALIBRATION_FILE.read_bytes()).hexdigest() in readme


def test_default_batches_shape_dtype_and_seed(word_tokenizer):
    a = calibration_batches(word_tokenizer, n_samples=6, seqlen=64, seed=3, batch_size=4)
    b = calibration_batches(word_tokenizer, n_samples=6, seqlen=64, seed=3, batch_size=4)
    c = calibration_batches(word_tokenizer, n_samples=6, seqlen=64, seed=4, batch_size=4)
    assert [t.shape for t in a] == [torch.Size([4, 64]), torch.Size([2, 64])]
    assert a[0].dtype == torch.int64
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_list_of_strings_and_text_file_give_the_same_windows(word_tokenizer, tmp_path):
    docs = ["Homarus gammarus , known as the European lobster"] * 20
    path = tmp_path / "calib.txt"
    path.write_text("\n\n".join(docs))
    from_list = calibration_batches(word_tokenizer, docs, n_samples=3, seqlen=16)
    from_file = calibration_batches(word_tokenizer, str(path), n_samples=3, seqlen=16)
    assert all(torch.equal(x, y) for x, y in zip(from_list, from_file))


def test_hugging_face_dataset_path_with_a_local_file(word_tokenizer, tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(["the European lobster is blue"] * 50))
    texts = load_calibration_texts("text@train", data_files=str(path))
    assert len(texts) == 50 and texts[0] == "the European lobster is blue"
    batches = calibration_batches(word_tokenizer, "text@train", n_samples=2, seqlen=8, data_files=str(path))
    assert batches[0].shape == (1, 8)


def test_windows_do_not_overlap_when_the_text_is_long_enough():
    ids = torch.arange(1000)
    w = sample_windows(ids, n_samples=10, seqlen=64, seed=0)
    starts = sorted(int(r[0]) for r in w)
    assert all(b - a >= 64 for a, b in zip(starts, starts[1:]))
    assert all(torch.equal(r, torch.arange(int(r[0]), int(r[0]) + 64)) for r in w)


def test_error_paths(word_tokenizer, tmp_path):
    with pytest.raises(CalibrationError, match="too short"):
        calibration_batches(word_tokenizer, ["only a few words"], n_samples=2, seqlen=512)
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration_texts(str(tmp_path / "missing.txt"))
    with pytest.raises(CalibrationError, match="must be positive"):
        calibration_batches(word_tokenizer, n_samples=0)
    with pytest.raises(CalibrationError, match="unsupported calibration source"):
        load_calibration_texts(42)


def test_config_carries_calibration_and_gptq_settings():
    cfg = QuantConfig(algorithm="gptq", n_samples=16, seqlen=256, act_order=True, damp_percent=0.05)
    again = QuantConfig.from_dict(cfg.to_dict())
    assert (again.n_samples, again.seqlen, again.act_order, again.damp_percent) == (16, 256, True, 0.05)
    with pytest.raises(ValueError):
        QuantConfig(damp_percent=1.5)
    with pytest.raises(ValueError):
        QuantConfig(n_samples=0)

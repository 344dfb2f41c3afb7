import math

import pytest
import torch

from quant_core.evaluation import perplexity, read_eval_text, windows


class CharTokenizer:
    def __call__(self, text, return_tensors=None):
        ids = torch.tensor([[ord(c) % 256 for c in text]])
        return type("Enc", (), {"input_ids": ids})()


def test_windows_are_non_overlapping_and_capped():
    w = windows(CharTokenizer(), "abcdefghij" * 10, seqlen=16, max_windows=3)
    assert w.shape == (3, 16)
    assert w[1, 0].item() == ord("g")  # token 16
    assert windows(CharTokenizer(), "x" * 100, seqlen=16, max_windows=None).shape == (6, 16)
    with pytest.raises(ValueError, match="fewer than one window"):
        windows(CharTokenizer(), "short", seqlen=16)


def test_perplexity_is_exp_of_mean_window_nll(tiny_llama):
    text = "the quick brown fox jumps over the lazy dog " * 4
    ppl = perplexity(tiny_llama, CharTokenizer(), text, seqlen=32, max_windows=2, progress=False)
    ids = windows(CharTokenizer(), text, 32, 2)
    nll = [torch.nn.functional.cross_entropy(tiny_llama(w[None]).logits[0, :-1], w[1:]).item() for w in ids]
    assert ppl == pytest.approx(math.exp(sum(nll) / 2), rel=1e-5)


def test_read_eval_text_joins_lines_with_blank_lines(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a\nb\n")
    assert read_eval_text(f) == "a\n\nb"

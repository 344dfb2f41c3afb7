"""``n_threads`` on QuantLlamaLLM reaches the model's engine (LlamaCPP's parameter)."""
import pytest

from llamaindex_quant import QuantLlamaLLM
from quant_core.cpu_threads import physical_cores


def test_n_threads_reaches_the_engine(make_tiny_model, make_tiny_tokenizer):
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(len(tokenizer))
    assert QuantLlamaLLM.from_model(model, tokenizer).engine.n_threads == physical_cores()
    assert QuantLlamaLLM.from_model(model, tokenizer, n_threads=1).engine.n_threads == 1


def test_bad_n_threads_is_refused(make_tiny_model, make_tiny_tokenizer):
    tokenizer = make_tiny_tokenizer()
    with pytest.raises(ValueError, match="n_threads"):
        QuantLlamaLLM.from_model(make_tiny_model(len(tokenizer)), tokenizer, n_threads=0)

"""``n_threads`` on QuantLLM and ChatQuant reaches the model's engine (LlamaCpp's parameter)."""
import pytest

from langchain_quant import ChatQuant, QuantLLM
from quant_core.cpu_threads import physical_cores
from quant_core.engine import GenerationEngine
from quant_core.testing import byte_tokenizer, tiny_llama_lm


def test_n_threads_reaches_the_engine():
    engine = GenerationEngine(tiny_llama_lm(), byte_tokenizer())
    assert engine.n_threads == physical_cores()
    llm = QuantLLM(engine=engine, n_threads=1)
    assert llm.get_engine().n_threads == 1 and llm._identifying_params["n_threads"] == 1
    assert QuantLLM(engine=engine).get_engine().n_threads == 1  # None leaves the model's setting alone
    assert ChatQuant(llm=QuantLLM(engine=engine), n_threads=3).get_engine().n_threads == 3


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_n_threads_is_refused_at_construction(bad):
    engine = GenerationEngine(tiny_llama_lm(), byte_tokenizer())
    with pytest.raises(ValueError, match="n_threads"):
        QuantLLM(engine=engine, n_threads=bad)
    with pytest.raises(ValueError, match="n_threads"):
        ChatQuant(llm=QuantLLM(engine=engine), n_threads=bad)

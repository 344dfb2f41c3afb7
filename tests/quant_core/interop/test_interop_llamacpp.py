"""The real consumer of our GGUF files: llama.cpp (through llama-cpp-python) scores SmolLM2 exported
as Q4_0 within 2 % of quantllm's perplexity on the same weights and the same token ids."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

try:
    import llama_cpp  # noqa: F401
    LLAMA_CPP_ERROR = None
except ImportError as exc:  # the test names the exact reason it cannot run
    LLAMA_CPP_ERROR = f"llama-cpp-python is not importable: {type(exc).__name__}: {exc}"

TEXT = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "wikitext2-test.txt"


def nll_per_window(logits: torch.Tensor, ids: torch.Tensor) -> float:
    return torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:]).item()


@pytest.mark.slow
@pytest.mark.skipif(LLAMA_CPP_ERROR is not None, reason=LLAMA_CPP_ERROR or "")
def test_llama_cpp_perplexity_of_our_q4_0_export_is_within_2_percent(smollm2, tmp_path):
    import numpy as np
    from llama_cpp import Llama

    from quant_core import QuantConfig, quantize
    from quant_core.evaluation import windows
    from quant_core.interop import export_gguf

    float_model, tokenizer = smollm2
    ours = quantize(copy.deepcopy(float_model), QuantConfig(weight_dtype="int4", group_size=32, scheme="sym"))
    path = export_gguf(ours, tokenizer, tmp_path / "smollm2-q4_0.gguf", tokenizer_pre="smollm", progress=False)
    text = "\n\n".join(TEXT.read_text(encoding="utf-8").splitlines()[:120])
    batches = windows(tokenizer, text, seqlen=256, max_windows=3)

    llm = Llama(str(path), n_ctx=256, n_batch=256, logits_all=True, n_threads=2, verbose=False)
    ours_nll, cpp_nll = 0.0, 0.0
    for ids in batches:
        with torch.no_grad():
            ours_nll += nll_per_window(ours(ids[None], use_cache=False).logits[0], ids)
        llm.reset()
        llm.eval(ids.tolist())
        cpp_nll += nll_per_window(torch.from_numpy(np.array(llm.scores[:256], dtype=np.float32)), ids)
    ppl_ours, ppl_cpp = math.exp(ours_nll / len(batches)), math.exp(cpp_nll / len(batches))
    assert abs(ppl_cpp / ppl_ours - 1) < 0.02, (ppl_ours, ppl_cpp)
    # and llama.cpp's own tokenizer (from the GGUF metadata we wrote) agrees with the HF tokenizer
    sample = "The quick brown fox jumps over the lazy dog."
    assert llm.tokenize(sample.encode(), add_bos=False) == tokenizer(sample).input_ids

"""The engine decodes with the lean step by default on CPU, token for token as transformers' modules,
keeps the module path reachable ($QUANTLLM_DECODE_STEP, decode_step=) and runs on ``n_threads``."""
import os

import pytest
import torch
import transformers

from quant_core import QuantConfig, cpu_features, quantize
from quant_core import engine_steppers
from quant_core.cpu_threads import physical_cores, torch_threads
from quant_core.decode import LeanDecoder, StaticDecoder
from quant_core.engine import DECODE_STEP_ENV, GenerationEngine, GenerationParams
from quant_core.errors import ConfigError
from quant_core.testing import TINY_VOCAB, byte_tokenizer

PROMPTS = ["hello world", "a", "the quick brown fox jumps over"]  # different lengths: left padding
GREEDY = GenerationParams(max_new_tokens=16)
NEEDS_KERNELS = pytest.mark.skipif(not cpu_features.at_least("avx2", cpu_features.detected_isa()),
                                   reason="CPU has no AVX2: the C++ kernels never run here")


def tiny_llama(tied: bool = False):
    # initializer_range 0.2: greedy tokens vary (the default 0.02 repeats one token: a weak comparison)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=160,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, initializer_range=0.2, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=0, tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(config).eval()


def decoders_built(monkeypatch) -> list:
    """Records the type of every decoder the engine's static stepper builds."""
    built, make = [], engine_steppers.make_decoder

    def recording(*args, **kwargs):
        decoder = make(*args, **kwargs)
        built.append(type(decoder))
        return decoder
    monkeypatch.setattr(engine_steppers, "make_decoder", recording)
    return built


@pytest.mark.parametrize("quantized", [False, pytest.param(True, marks=NEEDS_KERNELS)])
def test_lean_step_is_the_default_and_matches_the_module_path(monkeypatch, quantized):
    model = tiny_llama(tied=True)
    if quantized:
        model = quantize(model, QuantConfig(weight_dtype="int4", group_size=32), progress=False)
    tok = byte_tokenizer()
    built = decoders_built(monkeypatch)
    lean = GenerationEngine(model, tok).generate(PROMPTS, GREEDY)
    assert built == [LeanDecoder]
    modules = GenerationEngine(model, tok, decode_step="transformers").generate(PROMPTS, GREEDY)
    assert built == [LeanDecoder, StaticDecoder]
    assert [o.text for o in lean] == [o.text for o in modules]
    assert all(len(set(o.text)) > 3 for o in lean)  # the tokens vary: a real comparison


def test_environment_brings_back_the_module_path(monkeypatch):
    built = decoders_built(monkeypatch)
    monkeypatch.setenv(DECODE_STEP_ENV, "transformers")
    engine = GenerationEngine(tiny_llama(), byte_tokenizer())
    assert engine.decode_step == "transformers"
    engine.generate(PROMPTS[:1], GenerationParams(max_new_tokens=2))
    assert built == [StaticDecoder]
    monkeypatch.setenv(DECODE_STEP_ENV, "fast")
    with pytest.raises(ConfigError, match=DECODE_STEP_ENV):
        GenerationEngine(tiny_llama(), byte_tokenizer())


def test_hooked_model_keeps_its_modules(monkeypatch):
    """A forward hook must keep running: the engine then decodes through transformers' modules."""
    model, seen = tiny_llama(), []
    model.lm_head.register_forward_hook(lambda *_: seen.append(1))
    built = decoders_built(monkeypatch)
    GenerationEngine(model, byte_tokenizer()).generate(PROMPTS[:1], GenerationParams(max_new_tokens=3))
    assert built == [StaticDecoder] and len(seen) == 3


def test_lean_with_a_dynamic_cache_is_refused():
    with pytest.raises(ConfigError, match="static cache"):
        GenerationEngine(tiny_llama(), byte_tokenizer(), kv_cache="dynamic", decode_step="lean")


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ConfigError, match="n_threads"):
        GenerationEngine(tiny_llama(), byte_tokenizer(), n_threads=bad)


def test_passes_run_on_n_threads_and_the_callers_setting_comes_back(monkeypatch):
    seen, step = [], LeanDecoder.step

    def recording_step(self, ids):
        seen.append(torch.get_num_threads())
        return step(self, ids)
    monkeypatch.setattr(LeanDecoder, "step", recording_step)
    engine = GenerationEngine(tiny_llama(), byte_tokenizer(), n_threads=1)
    assert GenerationEngine(tiny_llama(), byte_tokenizer()).n_threads == physical_cores()
    with torch_threads(3):
        engine.generate(PROMPTS[:1], GenerationParams(max_new_tokens=4))
        assert torch.get_num_threads() == 3
    assert seen == [1, 1, 1]


def test_physical_cores_is_at_most_the_usable_cpus():
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))

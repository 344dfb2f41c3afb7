"""GenerationParams.from_kwargs (the one table of generation keywords) and GenerationOutput's usage."""
import pytest

from quant_core.engine_types import GenerationOutput, GenerationParams
from quant_core.errors import ConfigError, UnknownSettingError


def test_layers_merge_in_order_with_aliases_resolved_per_layer():
    params = GenerationParams.from_kwargs({"max_new_tokens": 256, "temperature": 0.5},
                                          {"max_tokens": 7, "stop_sequences": ("\n",)}, {"top_k": 3})
    assert params == GenerationParams(max_new_tokens=7, temperature=0.5, top_k=3, stop=["\n"])
    # a later layer's canonical name beats an earlier layer's alias, and the other way round
    assert GenerationParams.from_kwargs({"max_tokens": 5}, {"max_new_tokens": 9}).max_new_tokens == 9
    assert GenerationParams.from_kwargs({"max_new_tokens": 5}, {"max_tokens": 9}).max_new_tokens == 9


def test_stop_argument_none_values_and_ignored_pipeline_keys():
    params = GenerationParams.from_kwargs({"stop_sequence": "x", "seed": 3}, {"seed": None, "top_p": None},
                                          stop=["END"])
    assert params.stop == ["END"] and params.seed is None and params.top_p == 1.0  # None: not set
    assert GenerationParams.from_kwargs({"stop": "a"}).stop == ["a"]
    # pad_token_id changes no output (padding is masked); the output settings at the values that ask
    # for what the engine does anyway are accepted as asked
    trivial = {"return_full_text": False, "num_return_sequences": 1, "pad_token_id": 0}
    assert GenerationParams.from_kwargs(trivial) == GenerationParams()


def test_stop_token_ids_from_stopping_ids_and_eos_token_id():
    assert GenerationParams.from_kwargs({"stopping_ids": [5, 6]}).stop_token_ids == [5, 6]
    assert GenerationParams.from_kwargs({"eos_token_id": 7}).stop_token_ids == [7]
    assert GenerationParams.from_kwargs({"stop_token_ids": (3,)}, {"eos_token_id": [8, 9]}).stop_token_ids == [3, 8, 9]
    with pytest.raises(TypeError, match="stop_token_ids"):
        GenerationParams.from_kwargs({"stopping_ids": ["</s>"]})


@pytest.mark.parametrize("settings", [{"num_return_sequences": 2}, {"return_full_text": True}])
def test_output_settings_nothing_honours_are_refused_by_name(settings):
    (key,) = settings
    with pytest.raises(ConfigError, match=rf"{key}=.*not honoured here.*QuantLLM"):
        GenerationParams.from_kwargs({"max_new_tokens": 4}, settings)


@pytest.mark.parametrize("settings, temperature", [
    ({"do_sample": False, "temperature": 0.8}, 0.0),  # do_sample=False forces greedy
    ({"do_sample": True}, 1.0),  # sampling without a temperature samples at 1.0
    ({"do_sample": True, "temperature": 0.3}, 0.3),
])
def test_do_sample_switch(settings, temperature):
    assert GenerationParams.from_kwargs(settings).temperature == temperature


def test_unknown_keys_and_bad_values_are_clear_errors():
    with pytest.raises(UnknownSettingError, match=r"unknown generation setting\(s\) \['beam_width'\].*max_new_tokens"):
        GenerationParams.from_kwargs({"max_new_tokens": 3}, {"beam_width": 4})
    with pytest.raises(TypeError):  # an unknown keyword is a TypeError as in Python, and a ConfigError
        GenerationParams.check_keywords({"num_beams": 2}, "generate_kwargs")
    with pytest.raises(ConfigError, match="unknown generate_kwargs"):
        GenerationParams.check_keywords({"num_beams": 2}, "generate_kwargs")
    GenerationParams.check_keywords({"max_tokens": 2, "do_sample": True, "return_full_text": False})
    with pytest.raises(ValueError, match="top_p"):
        GenerationParams.from_kwargs({"top_p": 0})


def test_usage_of_one_output_and_of_several():
    a = GenerationOutput("x", prompt_tokens=4, completion_tokens=2, finish_reason="stop")
    b = GenerationOutput("y", prompt_tokens=3, completion_tokens=5, finish_reason="length")
    assert a.total_tokens == 6
    assert a.usage() == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert GenerationOutput.total_usage([a, b]) == {"prompt_tokens": 7, "completion_tokens": 7, "total_tokens": 14}
    assert GenerationOutput.total_usage([]) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

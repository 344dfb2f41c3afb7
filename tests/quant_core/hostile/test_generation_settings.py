"""Issue 17 part 3: generation settings are finite numbers of the right type, refused before any
model work with a ConfigError (a SettingTypeError, also a TypeError, for a wrong type)."""
import math

import numpy as np
import pytest

from quant_core.engine_types import GenerationParams
from quant_core import errors
from quant_core.errors import ConfigError


@pytest.mark.parametrize("settings, message", [
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"repetition_penalty": math.nan}, "repetition_penalty"),  # generated "HiHiHi..."
    ({"repetition_penalty": math.inf}, "repetition_penalty"),
    ({"top_p": math.nan}, "top_p"),
    ({"seed": -1}, "seed"),
    ({"seed": 2 ** 70}, "seed"),  # torch's generator overflows
])
def test_values_out_of_range_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        GenerationParams.from_kwargs(settings)


@pytest.mark.parametrize("settings", [
    {"max_new_tokens": True},  # meant 1
    {"max_new_tokens": 2.0},
    {"top_k": 2.5},
    {"top_k": True},
    {"temperature": "0.7"},  # was a TypeError from a comparison
    {"temperature": True},
    {"top_p": "1"},
    {"repetition_penalty": "x"},
    {"seed": "abc"},
    {"seed": 1.5},
    {"seed": True},
])
def test_values_of_the_wrong_type_are_refused(settings):
    with pytest.raises(errors.SettingTypeError, match=next(iter(settings))) as info:
        GenerationParams.from_kwargs(settings)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ConfigError)


def test_validate_checks_params_built_directly():
    with pytest.raises(ConfigError, match="temperature"):
        GenerationParams(temperature=math.nan).validate()


def test_numpy_and_int_numbers_are_accepted():
    params = GenerationParams.from_kwargs({"max_new_tokens": np.int64(5), "temperature": 1, "top_p": np.float32(0.5),
                                           "top_k": np.int32(3), "seed": np.int64(7), "repetition_penalty": 2})
    assert (params.max_new_tokens, params.temperature, params.top_k, params.seed) == (5, 1, 3, 7)
    assert GenerationParams.from_kwargs({"seed": 2 ** 63 - 1}).seed == 2 ** 63 - 1

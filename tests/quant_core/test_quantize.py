"""quantize(): algorithms are found by registration, by the name in the config."""
import copy
import importlib

import pytest

from quant_core import QuantConfig, quantize
from quant_core.config import ALGORITHMS
from quant_core.errors import ConfigError

qmod = importlib.import_module("quant_core.quantize")  # the package's `quantize` attribute is the function


def test_every_algorithm_of_the_config_is_registered():
    assert sorted(qmod.HANDLERS) == sorted(ALGORITHMS)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_quantize_runs_the_handler_registered_under_the_configs_algorithm(tiny_llama, monkeypatch, name):
    calls = []

    def handler(model, config, **kwargs):
        calls.append((config.algorithm, sorted(kwargs)))
        return model
    monkeypatch.setitem(qmod.HANDLERS, name, handler)
    model = quantize(copy.deepcopy(tiny_llama), QuantConfig(algorithm=name, group_size=32), calibration=None, progress=False)
    assert calls == [(name, ["calibration", "device", "progress", "tokenizer"])]
    assert model.config.quantization_config["algorithm"] == name


def test_registering_a_name_the_config_does_not_know_is_refused():
    with pytest.raises(ConfigError, match="ALGORITHM_SETTINGS"):
        qmod.register_algorithm("not_an_algorithm")

"""AWQ's scale search left to the run: decided by where AWQ calibrates, recorded, and read back."""
import logging

import pytest
import torch
import transformers as T

from quant_core import QuantConfig, quantize
from quant_core.awq_search_auto import SEARCHES, resolve_awq_search

SEARCH_FIELDS = ("awq_parent_batches", "awq_mlp_token_stride", "awq_scale_ridge")


def search(config):
    return tuple(getattr(config, name) for name in SEARCH_FIELDS)


def test_left_to_the_run_a_cpu_samples_and_a_gpu_searches_every_window(caplog):
    assert search(QuantConfig(algorithm="awq")) == (None, None, None)
    with caplog.at_level(logging.INFO, logger="quant_core"):
        assert search(resolve_awq_search(QuantConfig(algorithm="awq"), "cpu")) == (1, 32, 1.0)
    assert "awq_mlp_token_stride=32" in caplog.text  # the log says what was chosen
    assert search(resolve_awq_search(QuantConfig(algorithm="awq"), "cuda:0")) == (32, 1, 0.3)
    assert search(resolve_awq_search(QuantConfig(algorithm="awq"), "mps")) == (32, 1, 0.3)  # as on a GPU


def test_a_field_the_user_set_is_kept_and_the_others_are_decided():
    asked = QuantConfig(algorithm="awq", awq_scale_ridge=0.5, awq_parent_batches=4)
    assert search(resolve_awq_search(asked, "cpu")) == (4, 32, 0.5)


def test_another_algorithms_config_is_left_as_it_is():
    gptq = QuantConfig(algorithm="gptq")
    assert resolve_awq_search(gptq, "cpu") is gptq and search(gptq) == (None, None, None)


def test_each_device_sets_every_search_field():
    assert all(set(preset) == set(SEARCH_FIELDS) for preset in SEARCHES.values())


def test_quantize_on_a_cpu_records_the_search_it_ran_and_the_request_matches_it():
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(T.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4)).eval()
    calibration = torch.randint(0, 128, (4, 64), generator=torch.Generator().manual_seed(1))
    asked = QuantConfig(algorithm="awq", group_size=32)
    quantize(model, asked, calibration=calibration, progress=False, device="cpu")
    ran = QuantConfig.from_dict(model.config.quantization_config)
    assert search(ran) == (1, 32, 1.0)
    assert asked.as_ran(ran) == ran  # asking again for the defaults means what this run decided
    assert QuantConfig(algorithm="awq", group_size=32, awq_scale_ridge=0.3).as_ran(ran) != ran


@pytest.mark.parametrize("version,ridge", [(14, 0.3), (11, 0.0)])
def test_an_earlier_awq_checkpoint_reads_with_the_all_window_search_it_ran(version, ridge):
    assert search(QuantConfig.from_dict({"version": version, "algorithm": "awq"})) == (32, 1, ridge)
    kept = QuantConfig.from_dict({"version": version, "algorithm": "awq", "awq_parent_batches": 2})
    assert kept.awq_parent_batches == 2


def test_an_earlier_checkpoint_of_another_algorithm_loads_despite_the_then_defaults_it_recorded():
    saved = {"version": 14, "algorithm": "gptq", "awq_parent_batches": 32, "awq_mlp_token_stride": 1,
             "awq_scale_ridge": 0.3}
    assert search(QuantConfig.from_dict(saved)) == (None, None, None)
    assert search(QuantConfig.from_dict({**saved, "version": 9, "awq_scale_ridge": 0.0})) == (None, None, None)

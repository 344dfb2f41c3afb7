import typing

import pytest

from quant_core import QuantConfig, WeightOnlyQuantConfig
from quant_core.config import ALGORITHM_SETTINGS, CONFIG_VERSION
from quant_core.errors import ConfigError


def test_defaults_are_int4_g128_sym_rtn():
    c = QuantConfig()
    assert (c.algorithm, c.weight_dtype, c.group_size, c.scheme) == ("rtn", "int4_fullrange", 128, "sym")
    assert c.modules_to_not_convert == ["lm_head"]


def test_intel_names_accepted():
    c = WeightOnlyQuantConfig(weight_dtype="nf4", compute_dtype="bf16", algorithm="RTN", group_size=32)
    assert (c.weight_dtype, c.compute_dtype, c.algorithm) == ("nf4", "bf16", "rtn")
    assert QuantConfig(weight_dtype="int4").weight_dtype == "int4_fullrange"
    assert QuantConfig(weight_dtype="fp4").weight_dtype == "fp4_e2m1"


@pytest.mark.parametrize("kwargs,message", [
    ({"weight_dtype": "int5"}, "valid choices"),
    ({"weight_dtype": "nf4", "scheme": "asym"}, "codebook format"),
    ({"weight_dtype": "fp4", "scheme": "asym"}, "codebook format"),
    ({"group_size": 12}, "multiple of 8"),
    ({"group_size": 0}, "multiple of 8"),
    ({"compute_dtype": "int4"}, "valid choices"),
    ({"algorithm": "smoothquant"}, "valid choices"),
    ({"scheme": "affine"}, "valid choices"),
    ({"no_such_field": 1}, "no_such_field"),
])
def test_invalid_configs_fail_with_choices(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        QuantConfig(**kwargs)


def test_dict_round_trip_with_version():
    c = QuantConfig(weight_dtype="int3", scheme="asym", group_size=-1, mse_clip=True)
    d = c.to_dict()
    assert d["version"] == CONFIG_VERSION
    assert QuantConfig.from_dict({"quant_method": "quantllm", **d}) == c


def test_newer_version_refused():
    with pytest.raises(ValueError, match="newer"):
        QuantConfig.from_dict({"version": 99})


# What quantllm wrote as quantization_config before the AWQ/TEQ settings became fields (version 1).
V1_GPTQ = {"version": 1, "algorithm": "gptq", "weight_dtype": "int4_fullrange", "compute_dtype": "auto",
           "group_size": 32, "scheme": "sym", "scale_dtype": "fp16", "modules_to_not_convert": ["lm_head"],
           "mse_clip": False, "kernel": None, "calibration_dataset": None, "n_samples": 128, "seqlen": 512,
           "calibration_seed": 0, "calibration_batch_size": 1, "damp_percent": 0.05, "act_order": True,
           "static_groups": False, "true_sequential": True, "block_size": 128}


def test_a_version_1_dict_loads_with_the_settings_it_ran_with():
    c = QuantConfig.from_dict({"quant_method": "quantllm", **V1_GPTQ})
    assert (c.algorithm, c.damp_percent, c.act_order, c.group_size) == ("gptq", 0.05, True, 32)
    assert c.version == CONFIG_VERSION and c.teq_steps == 200 and c.awq_n_grid == 20
    assert QuantConfig.from_dict(c.to_dict()) == c


def _other_value(name):
    default = QuantConfig.model_fields[name].default
    if name == "signround_batch_windows":  # bounded by calibration_batch_size (8): fewer, not more
        return default // 2
    if isinstance(default, str):  # a choice: QuantEase's outlier_structure
        return {"unstructured": "columns", "all": "held_out", "float_model": "float_block", "spread": "first",
                "rtn": "gptq", "nearest": "centre"}[default]
    if default is None:  # derived (SignRound's lr) or decided where it runs (AWQ's search): a value of its type
        return 2 if int in typing.get_args(QuantConfig.model_fields[name].annotation) else 0.01
    if isinstance(default, float):
        return default / 2 if default else 0.01
    return (not default) if isinstance(default, bool) else default + 1


SETTINGS = [(name, owner) for owner, names in ALGORITHM_SETTINGS.items() for name in names]


@pytest.mark.parametrize("name,owner", SETTINGS)
def test_a_setting_of_another_algorithm_is_refused_unless_at_its_default(name, owner):
    value = _other_value(name)
    assert getattr(QuantConfig(algorithm=owner, **{name: value}), name) == value
    for algorithm, names in ALGORITHM_SETTINGS.items():
        assert QuantConfig(algorithm=algorithm, **{name: QuantConfig.model_fields[name].default})
        if name in names:  # shared (GPTQ's act_order is QuantEase's too)
            assert getattr(QuantConfig(algorithm=algorithm, **{name: value}), name) == value
        else:
            refusal = f"{name}=.* is a setting of algorithm=.*'{owner}'.*, not of '{algorithm}'"
            with pytest.raises(ConfigError, match=refusal):
                QuantConfig(algorithm=algorithm, **{name: value})


def test_every_algorithm_setting_is_a_described_field_saved_in_the_dict():
    d = QuantConfig().to_dict()
    for name, _ in SETTINGS:
        assert name in d and QuantConfig.model_fields[name].description


def test_coerce_takes_configs_dicts_and_load_in_shortcuts():
    c = QuantConfig(group_size=32)
    assert QuantConfig.coerce(c) is c and QuantConfig.coerce(None) is None
    assert QuantConfig.coerce(c.to_dict()) == c
    assert QuantConfig.coerce(load_in_4bit=True).weight_dtype == "int4_fullrange"
    assert QuantConfig.coerce(load_in_8bit=True).weight_dtype == "int8"
    with pytest.raises(ConfigError, match="at most one"):
        QuantConfig.coerce(load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(ConfigError, match="not both"):
        QuantConfig.coerce(c, load_in_4bit=True)
    with pytest.raises(TypeError, match="not str"):
        QuantConfig.coerce("int4")


def test_gptq_turns_act_order_and_clipping_on_at_three_bits_and_below_unless_given():
    for dtype, on in [("int3", True), ("int2", True), ("int4_fullrange", False), ("nf4", False), ("int8", False)]:
        config = QuantConfig(algorithm="gptq", weight_dtype=dtype)
        assert (config.act_order, config.mse_clip) == (on, on), dtype
    assert QuantConfig(algorithm="gptq", weight_dtype="int3", act_order=False).act_order is False  # given: kept
    assert QuantConfig(algorithm="rtn", weight_dtype="int3").mse_clip is False  # GPTQ's measurement only
    assert QuantConfig(algorithm="quantease", weight_dtype="int3").act_order is False  # measured worse there
    saved = QuantConfig(algorithm="gptq", weight_dtype="int3", act_order=False).to_dict()
    assert QuantConfig.from_dict(saved).act_order is False  # a saved config reads as it ran


def test_a_request_leaving_fields_to_the_run_matches_what_the_run_decided():
    ran = QuantConfig(algorithm="gptq", scale_tuning_steps=0, calibration_dtype="bf16")  # as a saved config holds
    assert QuantConfig(algorithm="gptq").as_ran(ran) == ran  # "auto" steps and dtype: whatever was decided
    assert QuantConfig(algorithm="gptq", scale_tuning_steps=128).as_ran(ran) != ran  # asked for, not left to the run
    assert QuantConfig(algorithm="gptq", calibration_dtype="fp32").as_ran(ran) != ran

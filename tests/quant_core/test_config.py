import pytest

from quant_core import QuantConfig, WeightOnlyQuantConfig
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
    assert d["version"] == 1
    assert QuantConfig.from_dict({"quant_method": "quantllm", **d}) == c


def test_newer_version_refused():
    with pytest.raises(ValueError, match="newer"):
        QuantConfig.from_dict({"version": 99})


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

"""Issue 17 part 3: a QuantConfig that cannot work is refused when it is built, with a ConfigError
saying what to do; a group wider than a layer is refused per layer before any allocation."""
import math

import pytest

from quant_core import QuantConfig, quantize
from quant_core.config import CONFIG_VERSION
from quant_core.errors import ConfigError
from quant_core.kernels.registry import KERNELS
from quant_core.testing import tiny_llama_lm


@pytest.mark.parametrize("fields, message", [
    ({"version": 99}, "version"),  # was saved, then every later command refused the checkpoint
    ({"version": 1}, "version"),  # older versions are read by from_dict only
    ({"kernel": "bogus"}, "reference"),  # was saved, then every generate died; the message lists the kernels
    ({"group_size": 1_000_000_000}, "group_size"),  # tried to allocate 2.3 TB after 18 s of work
    ({"group_size": True}, "not a bool"),
    ({"n_samples": True}, "not a bool"),
    ({"algorithm": "gptq", "block_size": True}, "not a bool"),
    ({"seqlen": 10 ** 9}, "seqlen"),
    ({"n_samples": 10 ** 9}, "n_samples"),
    ({"n_samples": 4096, "seqlen": 8192}, "tokens"),  # each is fine, their product is not
    ({"seqlen": 64, "calibration_skip_tokens": 64}, "calibration_skip_tokens"),
    ({"calibration_seed": -1}, "calibration_seed"),
    ({"calibration_seed": 2 ** 70}, "calibration_seed"),
    ({"modules_to_not_convert": [""]}, "empty"),  # "" is in every name: nothing would be quantized
    ({"calibration_dataset": ""}, "calibration_dataset"),
    ({"calibration_dataset": "   "}, "calibration_dataset"),
    ({"algorithm": "teq", "teq_lr": math.inf}, "finite"),
    ({"algorithm": "teq", "teq_lr": 5.0}, "teq_lr"),
    ({"algorithm": "teq", "teq_steps": 10 ** 9}, "teq_steps"),
    ({"algorithm": "awq", "awq_n_grid": 10 ** 9}, "awq_n_grid"),
    ({"algorithm": "awq", "awq_clip_grid": 10 ** 9}, "awq_clip_grid"),
    ({"algorithm": "gptq", "damp_percent": math.nan}, "damp_percent"),
])
def test_configs_that_cannot_work_are_refused_when_built(fields, message):
    with pytest.raises(ConfigError, match=message):
        QuantConfig(**fields)


def test_every_registered_kernel_name_is_accepted():
    for name in KERNELS:
        assert QuantConfig(kernel=name).kernel == name


def test_version_is_written_by_quantllm_and_read_back():
    config = QuantConfig(weight_dtype="int8")
    assert config.version == CONFIG_VERSION
    assert QuantConfig(**config.to_dict()) == config  # a dumped config (with its version) rebuilds
    assert QuantConfig.from_dict({"version": 1, "weight_dtype": "int8"}).version == CONFIG_VERSION
    with pytest.raises(ConfigError, match="version"):
        config.version = 99  # assignment is validated too


@pytest.mark.parametrize("version", ["2", 2.0, True, None, [2]])
def test_a_saved_version_that_is_not_an_integer_is_refused(version):
    with pytest.raises(ConfigError, match="version"):
        QuantConfig.from_dict({"version": version})


def test_a_group_wider_than_a_layer_is_refused_before_any_layer_is_quantized():
    model = tiny_llama_lm()  # hidden size 64: q_proj has 64 input columns
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"group_size=4096.*64 input columns"):
        quantize(model, QuantConfig(group_size=4096), progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)


def test_group_as_wide_as_the_layer_and_per_channel_still_quantize():
    quantize(tiny_llama_lm(), QuantConfig(group_size=64), progress=False)  # every layer has >= 64 columns
    quantize(tiny_llama_lm(), QuantConfig(group_size=-1), progress=False)

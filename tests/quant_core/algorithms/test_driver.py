"""The calibration driver: a per-block step is an algorithm; what no step covers gets RTN, with one warning."""
import copy
import logging

import torch
from torch import nn

from quant_core import QuantConfig, QuantLinear, quantize
from quant_core.algorithms.driver import CalibrationBlock, calibrate
from quant_core.algorithms.rtn import rtn


def _ids():
    return list(torch.randint(3, 256, (4, 32), generator=torch.Generator().manual_seed(1)).split(2))


def _codes(model):
    return {n: m.qweight for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def test_a_step_that_installs_rtn_gives_rtn_and_leftovers_get_rtn_with_one_warning(tiny_llama, caplog):
    """RTN codes do not depend on inputs, so a step installing RTN for its groups must give
    exactly the RTN model; skipping down_proj in the step leaves it to the driver's RTN."""
    config = QuantConfig(group_size=32, modules_to_not_convert=[])
    seen = []

    def step(block: CalibrationBlock):
        seen.append((block.index, block.prefix, len(block.inputs)))
        names = [n for group in block.linear_groups() for n in group if "down_proj" not in n]
        block.install({n: rtn(block.module.get_submodule(n).weight, config) for n in names})

    with caplog.at_level(logging.WARNING, logger="quant_core"):
        ours = calibrate(copy.deepcopy(tiny_llama), config, step, calibration=_ids(), progress=False, device="cpu")
    plain = quantize(copy.deepcopy(tiny_llama), config, progress=False)
    assert seen == [(0, "model.layers.0", 2), (1, "model.layers.1", 2)]
    assert not any(type(m) is nn.Linear for m in ours.modules())
    codes, expected = _codes(ours), _codes(plain)
    assert codes.keys() == expected.keys() and all(torch.equal(codes[n], expected[n]) for n in codes)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["calibrate does not cover model.layers.0.mlp.down_proj, model.layers.1.mlp.down_proj, "
                        "lm_head: quantized with RTN"]


def test_install_ignores_linears_the_config_skips(tiny_llama):
    config = QuantConfig(group_size=32, modules_to_not_convert=["lm_head", "layers.1.mlp"])

    def step(block: CalibrationBlock):  # as AWQ/TEQ do: results for every linear of the block
        block.install({n: rtn(m.weight, config) for n, m in block.module.named_modules() if isinstance(m, nn.Linear)})

    model = calibrate(copy.deepcopy(tiny_llama), config, step, calibration=_ids(), progress=False, device="cpu")
    assert isinstance(model.model.layers[0].mlp.up_proj, QuantLinear)
    assert type(model.model.layers[1].mlp.up_proj) is nn.Linear
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, tiny_llama.model.layers[1].mlp.up_proj.weight)

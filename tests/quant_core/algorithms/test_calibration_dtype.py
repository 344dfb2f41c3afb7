"""calibration_dtype='bf16': the calibration forwards run under bf16 autocast, the statistics and
the solvers stay fp32, and the result is close to fp32 calibration's."""
import copy

import torch

from quant_core import QuantConfig, QuantLinear, quantize
from quant_core.algorithms.hessians import Hessian
from quant_core.calibration import forward_precision


def _ids(n=4, t=32, vocab=256):
    return list(torch.randint(3, vocab, (n, t), generator=torch.Generator().manual_seed(1)).split(2))


def test_only_bf16_turns_autocast_on():
    with forward_precision(QuantConfig(algorithm="gptq", calibration_dtype="fp32"), "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with forward_precision(QuantConfig(algorithm="gptq", calibration_dtype="bf16"), "cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.randn(4, 8) @ torch.randn(8, 4)).dtype == torch.bfloat16


def test_hessian_sums_stay_fp32_under_autocast():
    x = torch.randn(64, 24)
    plain, inside = Hessian(24), Hessian(24)
    plain.add(x)
    with forward_precision(QuantConfig(algorithm="gptq", calibration_dtype="bf16"), "cpu"):
        inside.add(x)
    assert inside.matrix.dtype == torch.float32 and torch.equal(inside.matrix, plain.matrix)


def test_bf16_calibration_is_close_to_fp32_calibration(tiny_llama):
    ids = torch.cat(_ids())
    with torch.no_grad():
        reference = tiny_llama(ids).logits
    errors, models = {}, {}
    for dtype in ("fp32", "bf16"):
        cfg = QuantConfig(algorithm="quantease", group_size=32, num_iter=3, calibration_dtype=dtype)
        models[dtype] = quantize(copy.deepcopy(tiny_llama), cfg, calibration=_ids(), progress=False)
        with torch.no_grad():
            errors[dtype] = (models[dtype](ids).logits - reference).pow(2).mean().item()
    assert errors["bf16"] < 1.3 * errors["fp32"], errors
    layers = [[m for m in models[d].modules() if isinstance(m, QuantLinear)] for d in ("fp32", "bf16")]
    same = sum((a.qweight == b.qweight).float().mean().item() for a, b in zip(*layers)) / len(layers[0])
    assert 0.5 < same < 1.0  # the statistics differ a little, the solutions mostly agree
    assert models["bf16"].config.quantization_config["calibration_dtype"] == "bf16"

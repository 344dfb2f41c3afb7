"""GPTQ's damping limit (issue 16): as damp_percent grows the error feedback fades, so GPTQ must
turn into RTN exactly, codes and scales alike, in every format and with a partial last group."""
import pytest
import torch

from quant_core import QuantConfig
from quant_core.algorithms.gptq import gptq
from quant_core.algorithms.rtn import rtn


def _hessian_with_a_massive_channel(k: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2048, k, generator=gen)
    x[0, 7] = 500.0  # one token with a huge activation in one channel (an attention-sink token)
    return 2 * x.T @ x / x.shape[0]


@pytest.mark.parametrize("dtype,scheme,group_size", [("int4_fullrange", "sym", 128), ("int4_clip", "sym", 128),
                                                     ("int4_fullrange", "asym", 64), ("nf4", "sym", 128),
                                                     ("int3", "asym", -1)])
def test_infinite_damping_reproduces_rtn_exactly(dtype, scheme, group_size):
    k = 576  # 4.5 groups of 128: the last group is partial, as in SmolLM2's hidden size
    w = torch.randn(48, k, generator=torch.Generator().manual_seed(0)) * 0.05
    cfg = QuantConfig(algorithm="gptq", weight_dtype=dtype, scheme=scheme, group_size=group_size)
    damped = cfg.model_copy(update={"damp_percent": 1e8})  # past the config's < 1 bound on purpose
    got, want = gptq(w, _hessian_with_a_massive_channel(k), damped), rtn(w, cfg)
    assert torch.equal(got.codes, want.codes)
    assert torch.equal(got.scales, want.scales.float())
    if want.zeros is not None:
        assert torch.equal(got.zeros, want.zeros.float())

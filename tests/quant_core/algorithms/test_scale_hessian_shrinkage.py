"""AWQ's and TEQ's Hessians blended with their diagonal (awq_hessian_shrinkage, teq_hessian_shrinkage),
as GPTQ's hessian_shrinkage (issue 16): what each objective then measures, and that 0 changes nothing."""
import pytest
import torch
from torch import nn

from quant_core import QuantConfig
from quant_core.algorithms import awq
from quant_core.algorithms.equalize import ScaleGroup
from quant_core.primitives import shrunk
from quant_core.algorithms.input_stats import InputStats
from quant_core.algorithms.teq import batch_error, checking_hessian
from quant_core.primitives import output_error


def correlated_rows(n=512, k=64, seed=0):
    """Rows whose channels move together in pairs: a Hessian with large off-diagonal terms."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, k // 2, generator=g)
    return torch.cat([base, base + 0.1 * torch.randn(n, k // 2, generator=g)], 1) * torch.linspace(0.2, 3, k)


@pytest.mark.parametrize("s", [0.0, 0.3, 1.0])
def test_teq_batch_error_is_the_output_error_under_the_blended_gram_matrix(s):
    xb, dw = correlated_rows(64, 32), torch.randn(8, 32)
    expected = output_error(dw, shrunk(xb.T @ xb, s)) / (64 * 8)
    torch.testing.assert_close(batch_error(xb, dw, s), expected, rtol=1e-4, atol=1e-6)


def test_teq_checks_its_scales_against_the_blended_hessian():
    stats = InputStats(32)
    stats.add(correlated_rows(256, 32))
    config = QuantConfig(algorithm="teq", teq_hessian_shrinkage=0.4)
    torch.testing.assert_close(checking_hessian(stats, config), shrunk(stats.H, 0.4))
    assert checking_hessian(stats, QuantConfig(algorithm="teq")) is stats.H  # 0: the matrix itself


def test_awq_clip_search_uses_the_blended_hessian(monkeypatch):
    torch.manual_seed(0)
    lin = nn.Linear(64, 16, bias=False)
    stats = InputStats(64)
    stats.add(correlated_rows())
    seen = []
    real = awq.search_clip
    monkeypatch.setattr(awq, "search_clip", lambda w, H, config: seen.append(H) or real(w, H, config))
    monkeypatch.setattr(awq, "equalize_block", lambda *a: None)  # scales are not what this test checks
    group = ScaleGroup(["lin"], [lin])
    for s in (0.0, 0.7):
        awq.awq_block([group], {"lin": stats}, QuantConfig(algorithm="awq", group_size=32, awq_hessian_shrinkage=s))
    torch.testing.assert_close(seen[0], stats.H)
    torch.testing.assert_close(seen[1], shrunk(stats.H, 0.7))
    assert not torch.allclose(seen[0], seen[1])


def test_the_fields_are_off_by_default_and_belong_to_their_algorithm():
    config = QuantConfig()
    assert config.awq_hessian_shrinkage == 0.0 and config.teq_hessian_shrinkage == 0.0
    with pytest.raises(ValueError, match="awq_hessian_shrinkage"):
        QuantConfig(algorithm="gptq", awq_hessian_shrinkage=0.5)
    with pytest.raises(ValueError, match="teq_hessian_shrinkage"):
        QuantConfig(algorithm="awq", teq_hessian_shrinkage=0.5)
    old = QuantConfig(algorithm="awq").to_dict()
    old["version"] = 8
    del old["awq_hessian_shrinkage"], old["teq_hessian_shrinkage"]
    assert QuantConfig.from_dict(old).awq_hessian_shrinkage == 0.0  # calibrated before the field existed

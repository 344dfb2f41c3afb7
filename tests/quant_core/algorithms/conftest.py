"""Fixtures shared by the per-layer algorithm tests (GPTQ, QuantEase)."""
import pytest
import torch

from quant_core.algorithms.gptq import Hessian


@pytest.fixture(scope="module")
def layer():
    """A weight and correlated inputs with a few large channels, like real activations."""
    g = torch.Generator().manual_seed(0)
    k, n = 192, 48
    x = torch.randn(1024, k, generator=g) @ (0.3 * torch.randn(k, k, generator=g) + torch.eye(k))
    x[:, :3] *= 8
    h = Hessian(k)
    for chunk in x.split(300):
        h.add(chunk)
    return torch.randn(n, k, generator=g), x, h.matrix

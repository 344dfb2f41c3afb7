"""Fixtures shared by the per-layer algorithm tests (GPTQ, QuantEase) and the SignRound block tests."""
import pytest
import torch
from signround_support import ids, tiny

from quant_core.algorithms.gptq import Hessian
from quant_core.blocks import capture_first_block_inputs


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


@pytest.fixture(scope="module")
def model_and_inputs():
    """The tiny model and its first block's inputs on 2 calibration batches of 4 windows."""
    model = tiny()
    return model, capture_first_block_inputs(model, list(ids().split(4)), "cpu")

import pytest
import torch

from quant_core import QuantConfig
from quant_core.algorithms.rtn import rtn
from quant_core.kernels import LayerSpec, choose_kernel, explain, registry
from quant_core.kernels.base import Kernel
from quant_core.modules import QuantLinear


class NeverKernel(Kernel):
    name = "never"

    @classmethod
    def can_implement(cls, spec):
        return False, "needs a feature this test withholds"


class BrokenKernel(Kernel):
    name = "broken"

    @classmethod
    def can_implement(cls, spec):
        raise ImportError("backend library missing")


def spec(device="cpu"):
    return LayerSpec("int4_fullrange", 4, 128, 256, 64, True, False, "none", "fp32", device)


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.setitem(registry.KERNELS, "never", f"{__name__}:NeverKernel")
    monkeypatch.setitem(registry.KERNELS, "broken", f"{__name__}:BrokenKernel")
    monkeypatch.setitem(registry.PRIORITY, "cpu", ["never", "broken", "reference"])
    monkeypatch.setitem(registry.PRIORITY, "fakedev", ["never", "broken"])
    monkeypatch.delenv(registry.FORCE_ENV, raising=False)


def test_falls_through_to_reference_with_reasons(fake_registry):
    assert choose_kernel(spec()).name == "reference"
    verdicts = explain(spec())
    assert verdicts[0] == ("never", False, "needs a feature this test withholds")
    assert verdicts[1][1] is False and "backend library missing" in verdicts[1][2]


def test_no_kernel_lists_every_reason(fake_registry):
    with pytest.raises(registry.NoKernelError) as err:
        choose_kernel(spec("fakedev"))
    assert "never: needs a feature" in str(err.value) and "broken: unavailable" in str(err.value)


def test_forced_kernel(fake_registry, monkeypatch):
    with pytest.raises(registry.NoKernelError, match="forced"):
        choose_kernel(spec(), forced="never")
    monkeypatch.setenv(registry.FORCE_ENV, "nonexistent")
    with pytest.raises(registry.NoKernelError, match="unknown kernel"):
        choose_kernel(spec())
    monkeypatch.setenv(registry.FORCE_ENV, "reference")
    assert choose_kernel(spec()).name == "reference"


def test_module_chooses_once_and_again_after_move(fake_registry):
    cfg = QuantConfig(group_size=32)
    q = QuantLinear.from_packed(rtn(torch.randn(16, 64), cfg).pack(cfg), None)
    q(torch.randn(1, 64))
    first = q.kernel
    q(torch.randn(1, 64))
    assert q.kernel is first
    q.to(torch.float32)
    assert q.kernel is None

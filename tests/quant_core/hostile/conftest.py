"""One tiny quantized checkpoint saved once per session; tests tamper with copies of it."""
from __future__ import annotations

import shutil

import pytest

from quant_core import QuantConfig, quantize
from quant_core.serialization import save_quantized
from quant_core.testing import byte_tokenizer, tiny_llama_lm

from hostile_helpers import logits_of

@pytest.fixture(scope="session")
def saved_ckpt(tmp_path_factory):
    """(path, reference logits) of an asym int4 g32 checkpoint with a tokenizer; do not modify it."""
    model = quantize(tiny_llama_lm(), QuantConfig(weight_dtype="int4", scheme="asym", group_size=32, head_weight_dtype=None), progress=False)
    path = save_quantized(model, byte_tokenizer(), tmp_path_factory.mktemp("saved") / "q")
    return path, logits_of(model)


@pytest.fixture
def ckpt(saved_ckpt, tmp_path):
    """A copy of the saved checkpoint to tamper with: (path, reference logits)."""
    path, ref = saved_ckpt
    return shutil.copytree(path, tmp_path / "q"), ref

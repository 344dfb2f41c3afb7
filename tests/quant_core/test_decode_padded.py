"""A prompt in a left-padded batch gets the bits it gets alone (issue 15: ``chain.batch`` must equal
the invoke loop). On the default prompt path a batch of short prompts has more rows than the GEMV's
limit (``gemm_rows``), so its rows went to the blocked GEMM while each prompt alone took the GEMV,
and PyTorch's SDPA summed a padded row's masked attention in other chunks than the row alone:
SmolLM2 int4's chain.batch of 16 x 32 tokens differed from its invoke loop in one answer."""
from __future__ import annotations

import pytest
import torch
from test_decode_lean import NEEDS_KERNELS, prompt, tiny  # pytest puts this directory on sys.path

from quant_core import cpu_features
from quant_core.config import QuantConfig
from quant_core.decode import LeanDecoder
from quant_core.kernels import cpu_simd
from quant_core.quantize import quantize

STEPS = 5


def padded(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(p.shape[1] for p in prompts)
    ids = torch.cat([torch.cat([torch.zeros(1, width - p.shape[1], dtype=torch.long), p], 1) for p in prompts])
    mask = torch.cat([torch.cat([torch.zeros(1, width - p.shape[1], dtype=torch.long), torch.ones_like(p)], 1)
                      for p in prompts])
    return ids, mask


def model_on(isa: str, path: str, dtype: torch.dtype, monkeypatch):
    if isa == "avx2":
        monkeypatch.setenv(cpu_features.ISA_ENV, "avx2")
    monkeypatch.setattr(cpu_simd, "PROMPT_PATH", path)
    # group 64: whole 64-column chunks, so forced AVX2 decodes a single row on its row kernel (qgemv16_rows.cpp)
    return quantize(tiny("llama").to(dtype), QuantConfig(weight_dtype="int4", group_size=64,
                                                         modules_to_not_convert=[]))


@NEEDS_KERNELS
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("path", ["same", "q8"])
@pytest.mark.parametrize("isa", ["native", "avx2"])
@pytest.mark.parametrize("lengths", [(9, 12, 7, 11), (40, 9, 12)], ids=["short", "mixed"])
def test_each_prompt_of_a_padded_batch_gets_the_bits_it_gets_alone(lengths, isa, path, dtype, monkeypatch):
    """"short": 4 x 12 rows take the GEMM's row count, each prompt alone does not; "mixed": one prompt
    longer than gemm_rows next to short ones (each row on the kernel of its own prompt)."""
    model = model_on(isa, path, dtype, monkeypatch)
    prompts = [prompt(1, n, seed=n) for n in lengths]
    ids, mask = padded(prompts)
    batch = LeanDecoder(model, len(prompts), ids.shape[1] + STEPS)
    kernel = batch.lean.layers[0].qkv.kernel
    assert ids.numel() >= kernel.gemm_rows and min(lengths) < kernel.gemm_rows  # the shapes that broke
    assert (kernel.variant() == "avx2") == (isa == "avx2")
    logits = batch.prefill(ids, mask)
    tokens = [logits.argmax(-1)]
    for _ in range(STEPS - 1):
        tokens.append(batch.step(tokens[-1]).argmax(-1))
    for row, p in enumerate(prompts):
        alone = LeanDecoder(model, 1, p.shape[1] + STEPS)
        assert torch.equal(alone.prefill(p)[0], logits[row]), f"prompt {row}'s logits"
        for step in range(STEPS - 1):  # fed the batch's tokens: logits bit-equal, so the tokens are too
            assert torch.equal(alone.step(tokens[step][row: row + 1])[0].argmax(), tokens[step + 1][row])

"""The static-cache decoder (transformers' modules) produces the same greedy tokens as the model's own dynamic cache."""
from __future__ import annotations

import pytest
import torch

from quant_core.config import QuantConfig
from quant_core.decode import StaticDecoder, greedy_generate
from quant_core.quantize import quantize


def test_static_cache_matches_dynamic_cache(tiny_llama):
    ids = torch.randint(3, 256, (2, 7), generator=torch.Generator().manual_seed(0))
    dyn, _ = greedy_generate(tiny_llama, ids, 10, static_cache=False)
    sta, stats = greedy_generate(tiny_llama, ids, 10, static_cache=True, lean=False)
    assert torch.equal(dyn, sta)
    assert stats["new_tokens"] == 10 and stats["decode_s"] > 0


def test_left_padded_rows_decode_like_unpadded_ones(tiny_llama):
    long_ids = torch.randint(3, 256, (1, 8), generator=torch.Generator().manual_seed(1))
    short_ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(2))
    batch = torch.cat([long_ids, torch.cat([torch.zeros(1, 3, dtype=torch.long), short_ids], 1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    both, _ = greedy_generate(tiny_llama, batch, 6, attention_mask=mask, lean=False)
    alone, _ = greedy_generate(tiny_llama, short_ids, 6, lean=False)
    assert torch.equal(both[1], alone[0])


def test_decoder_is_reusable_and_guards_its_size(tiny_llama):
    ids = torch.randint(3, 256, (1, 4), generator=torch.Generator().manual_seed(3))
    dec = StaticDecoder(tiny_llama, batch_size=1, max_len=8)
    first, _ = greedy_generate(tiny_llama, ids, 4, decoder=dec)
    again, _ = greedy_generate(tiny_llama, ids, 4, decoder=dec)
    assert torch.equal(first, again)
    dec.step(first[:, -1])  # 4 prompt + 4 new positions fill the 8-slot cache
    with pytest.raises(ValueError, match="cache holds 8"):
        dec.step(first[:, -1])
    with pytest.raises(ValueError, match="batch 1"):
        dec.prefill(torch.ones(2, 3, dtype=torch.long))


def test_quantized_model_decodes_through_the_static_cache(tiny_llama):
    model = quantize(tiny_llama, QuantConfig(weight_dtype="int8", group_size=-1, modules_to_not_convert=[]))
    ids = torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(4))
    dyn, _ = greedy_generate(model, ids, 8, static_cache=False)
    sta, _ = greedy_generate(model, ids, 8, lean=False)
    assert torch.equal(dyn, sta)


def test_cuda_graph_needs_a_cuda_model(tiny_llama):
    with pytest.raises(ValueError, match="CUDA device"):
        StaticDecoder(tiny_llama, batch_size=1, max_len=8, cuda_graph=True)
    assert not StaticDecoder(tiny_llama, batch_size=1, max_len=8).graphed  # auto: off on CPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (graph capture)")
@pytest.mark.parametrize("fmt", [None, "int4"])
def test_graph_replayed_steps_match_eager_steps(tiny_llama, fmt):
    """The graphed step (4-D bool mask, counters moved inside the graph) decodes the same tokens,
    for a left-padded batch, and again after the decoder is reused for a new prompt."""
    model = tiny_llama.cuda()
    if fmt:
        model = quantize(model, QuantConfig(weight_dtype=fmt, group_size=32, modules_to_not_convert=[]))
    ids = torch.randint(3, 256, (2, 7), generator=torch.Generator().manual_seed(5)).cuda()
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    eager = StaticDecoder(model, 2, 20, cuda_graph=False)
    graphed = StaticDecoder(model, 2, 20)
    assert graphed.graphed
    for prompt in (ids, ids.flip(1)):
        a, _ = greedy_generate(model, prompt, 9, attention_mask=mask, decoder=eager)
        b, _ = greedy_generate(model, prompt, 9, attention_mask=mask, decoder=graphed)
        assert torch.equal(a, b)

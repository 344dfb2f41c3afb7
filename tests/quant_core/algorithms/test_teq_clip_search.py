"""TEQ with AWQ's clipping search after its scales (teq_clip_search, issue 16; on by default since session 8):
the folded weights' output error can only fall, off changes nothing, the setting belongs to TEQ, and older
checkpoints read with the defaults they ran with."""
import pytest
import torch
from torch import nn

from quant_core import QuantConfig
from quant_core.algorithms import teq
from quant_core.algorithms.equalize import ScaleGroup
from quant_core.algorithms.input_stats import InputStats
from quant_core.primitives import default_g_idx, dequantize_weight, output_error


def heavy_tailed_layer(k=64, n=16, seed=0):
    """A linear whose groups each hold one large weight, so narrowing their ranges pays."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.02)
        lin.weight[:, ::16] *= 12
    stats = InputStats(k)
    stats.add(torch.randn(512, k, generator=g))
    return lin, stats


def quantized_error(clip: bool) -> float:
    lin, stats = heavy_tailed_layer()
    w = lin.weight.detach().clone()
    config = QuantConfig(algorithm="teq", group_size=32, teq_clip_search=clip)
    result = teq.teq_block([ScaleGroup(["lin"], [lin])], {"lin": stats}, config)["lin"]
    deq = dequantize_weight(result.codes, result.scales, result.zeros, config.format,
                            default_g_idx(w.shape[1], config.group_size))
    return output_error(w - deq, stats.H).item()


def test_clip_search_lowers_the_output_error_of_heavy_tailed_groups():
    plain, clipped = quantized_error(False), quantized_error(True)
    assert clipped < 0.99 * plain


def test_the_search_narrows_some_ranges_only_when_asked():
    lin, stats = heavy_tailed_layer()
    w = lin.weight.detach()
    assert teq.clip_ratios(w, stats, QuantConfig(algorithm="teq", group_size=32, teq_clip_search=False)) == 1.0
    ratios = teq.clip_ratios(w, stats, QuantConfig(algorithm="teq", group_size=32, teq_clip_search=True))
    assert ratios.shape == (16, 2) and (ratios < 1).any() and (ratios > 0.5).all()


def test_on_by_default_and_only_for_teq():
    assert QuantConfig(algorithm="teq").teq_clip_search is True
    with pytest.raises(ValueError, match="teq_clip_search"):
        QuantConfig(algorithm="awq", teq_clip_search=False)


def test_a_version_9_teq_checkpoint_reads_with_the_defaults_it_ran_with():
    old = QuantConfig.from_dict({"version": 9, "algorithm": "teq"})
    assert (old.teq_clip_search, old.teq_scale_ridge) == (False, 0.0)
    new = QuantConfig.from_dict({"version": 10, "algorithm": "teq"})
    assert (new.teq_clip_search, new.teq_scale_ridge) == (True, 0.3)
    assert QuantConfig.from_dict({"version": 9, "algorithm": "awq"}).teq_clip_search is True  # not TEQ: defaults

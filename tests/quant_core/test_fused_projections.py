import pytest
import torch

from quant_core import QuantConfig, QuantLinear, quantize
from quant_core.algorithms.rtn import rtn
from quant_core.fused_projections import fuse_projections, fusion_reason, stacked, unfuse_projections


def _linear(n: int, k: int, config: QuantConfig, bias: bool = False, seed: int = 0) -> QuantLinear:
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias)
    return QuantLinear.from_packed(rtn(lin.weight, config).pack(config), lin.bias, kernel="reference")


@pytest.mark.parametrize("wd,scheme,gs", [("int4", "asym", 32), ("nf4", "sym", 64), ("int8", "sym", -1)])
def test_stacked_weight_holds_each_members_rows(wd, scheme, gs):
    config = QuantConfig(weight_dtype=wd, scheme=scheme, group_size=gs)
    parts = [_linear(n, 96, config, seed=n).packed for n in (48, 16, 16)]
    whole = stacked(parts)
    assert torch.equal(whole.dequantize(), torch.cat([p.dequantize() for p in parts]))  # atol 0
    assert whole.problems() == []


def test_fused_model_equals_separate_calls(tiny_llama):
    model = quantize(tiny_llama, QuantConfig(group_size=32, kernel="reference"), progress=False)
    ids = torch.randint(3, 256, (2, 7))
    with torch.no_grad():
        separate = model(ids).logits
        assert fuse_projections(model) == 2 * 2  # q/k/v and gate/up in each of 2 layers
        assert model.model.layers[0].self_attn.k_proj.fused is model.model.layers[0].self_attn.q_proj.fused
        fused = model(ids).logits
        unfuse_projections(model)
        again = model(ids).logits
    assert torch.equal(fused, separate)  # same codes, scales and reference matmul: bit for bit
    assert torch.equal(again, separate)


def test_each_member_gets_exactly_its_separate_result():
    config = QuantConfig(weight_dtype="int4", group_size=32)
    members = [_linear(n, 64, config, bias=True, seed=n) for n in (64, 32, 32)]
    x = torch.randn(3, 64)
    separate = [m(x) for m in members]
    parent = torch.nn.Module()
    parent.q_proj, parent.k_proj, parent.v_proj = members
    assert fuse_projections(parent) == 1
    # the stacked product is the reference kernel's matmul over the concatenated dequantized rows
    w = torch.cat([m.packed.dequantize() for m in members])
    whole = torch.nn.functional.linear(x, w)
    for m, ref, (lo, hi) in zip(members, separate, ((0, 64), (64, 96), (96, 128))):
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(m(x), whole[:, lo:hi] + m.bias)


def test_call_order_and_other_inputs_recompute():
    config = QuantConfig(weight_dtype="int4", group_size=32)
    parent = torch.nn.Module()
    parent.gate_proj, parent.up_proj = _linear(48, 64, config, seed=1), _linear(48, 64, config, seed=2)
    x1, x2 = torch.randn(2, 64), torch.randn(2, 64)
    want = {(name, i): getattr(parent, name)(x) for name in ("gate_proj", "up_proj") for i, x in ((1, x1), (2, x2))}
    fuse_projections(parent)
    # up before gate, a member twice on one input, members on different inputs: each answer is its own
    order = [("up_proj", 1), ("up_proj", 1), ("gate_proj", 2), ("up_proj", 2), ("gate_proj", 1)]
    for name, i in order:
        got = getattr(parent, name)(x1 if i == 1 else x2)
        torch.testing.assert_close(got, want[(name, i)], rtol=1e-5, atol=1e-5)


def test_state_dict_is_unchanged_by_fusion(tiny_llama):
    model = quantize(tiny_llama, QuantConfig(group_size=32, kernel="reference"), progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fuse_projections(model)
    with torch.no_grad():
        model(torch.randint(3, 256, (1, 5)))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unlike_members_are_not_fused():
    a = _linear(32, 64, QuantConfig(weight_dtype="int4", group_size=32))
    b = _linear(32, 64, QuantConfig(weight_dtype="int4", group_size=64))
    assert fusion_reason([a, b]) == "members differ in group size"
    assert fusion_reason([a, torch.nn.Linear(64, 32)]) == "not every member is a QuantLinear"
    parent = torch.nn.Module()
    parent.gate_proj, parent.up_proj = a, b
    assert fuse_projections(parent) == 0 and a.fused is None


def test_moving_a_member_resets_the_group():
    config = QuantConfig(weight_dtype="int4", group_size=32)
    parent = torch.nn.Module()
    parent.gate_proj, parent.up_proj = _linear(32, 64, config, seed=1), _linear(32, 64, config, seed=2)
    fuse_projections(parent)
    x = torch.randn(1, 64)
    parent.gate_proj(x)
    group = parent.gate_proj.fused
    assert group.kernel is not None
    parent.to(torch.float32)
    assert group.kernel is None
    assert parent.gate_proj.kernel is None


def test_fusion_setting(monkeypatch):
    from quant_core import fused_projections as fp
    monkeypatch.setenv(fp.FUSE_ENV, "1")
    assert fp.fusion_wanted("cpu") and fp.fusion_wanted("cuda")
    monkeypatch.setenv(fp.FUSE_ENV, "0")
    assert not fp.fusion_wanted("cuda")
    monkeypatch.delenv(fp.FUSE_ENV)
    assert fp.fusion_wanted("cuda") == fp.DEFAULT_ON_CUDA and not fp.fusion_wanted("cpu")


def test_static_decoder_fuses_when_asked(tiny_llama, monkeypatch):
    from quant_core.decode import StaticDecoder
    from quant_core.fused_projections import FUSE_ENV
    model = quantize(tiny_llama, QuantConfig(group_size=32, kernel="reference"), progress=False)
    ids = torch.randint(3, 256, (1, 6))
    plain = StaticDecoder(model, 1, 12)
    want = [plain.prefill(ids)] + [plain.step(torch.tensor([5 + i])) for i in range(3)]
    monkeypatch.setenv(FUSE_ENV, "1")
    dec = StaticDecoder(model, 1, 12)
    assert model.model.layers[1].mlp.up_proj.fused is not None
    got = [dec.prefill(ids)] + [dec.step(torch.tensor([5 + i])) for i in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_double_quantized_and_act_order_members_fuse_exactly():
    from dataclasses import replace
    config = QuantConfig(weight_dtype="int4", group_size=32)
    parent = torch.nn.Module()
    perm_groups = torch.randperm(64) // 32  # one act-order group index per input column, shared
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        packed = rtn(torch.nn.Linear(64, 32).weight, config).pack(config).with_double_quant(2)
        members.append(QuantLinear.from_packed(replace(packed, g_idx=perm_groups.to(torch.int32)), None,
                                               kernel="reference"))
    parent.gate_proj, parent.up_proj = members
    x = torch.randn(2, 64)
    separate = [m(x) for m in members]
    assert fuse_projections(parent) == 1
    assert all(torch.equal(m(x), ref) for m, ref in zip(members, separate))
    members[1].g_idx = torch.arange(64, dtype=torch.int32) // 32
    assert fusion_reason(members) == "members differ in act-order group indices"

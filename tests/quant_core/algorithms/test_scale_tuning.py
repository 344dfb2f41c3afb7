"""Scale tuning (``scale_tuning_steps``): by default on a GPU with room for it only, codes and zero points untouched, the calibration
objective lower after any algorithm, never worse (the guard), bad settings refused, save and reload."""
import pytest
from signround_support import ids, tiny
import torch

from quant_core import QuantConfig, quantize
from quant_core.algorithms import scale_tuning
from quant_core.algorithms.scale_tuning import ScaleTuning
from quant_core.errors import ConfigError
from quant_core.modules import QuantLinear
from reload_support import reloaded_logits

BASE = dict(weight_dtype="int3", scheme="asym", group_size=32, head_weight_dtype=None, n_samples=8, seqlen=32,
            calibration_batch_size=4, calibration_dtype="fp32")
ALGORITHMS = {"rtn": {}, "gptq": {}, "quantease": {"num_iter": 3},
              "signround": {"signround_steps": 10, "signround_batch_windows": 2}}
TUNING = dict(scale_tuning_steps=30, scale_tuning_lr=1e-2, scale_tuning_batch_windows=2)


def run(algorithm, **fields):
    config = QuantConfig(**{**BASE, "algorithm": algorithm, **ALGORITHMS.get(algorithm, {}), **fields})
    return quantize(tiny(), config, calibration=list(ids().split(4)), progress=False, device="cpu")


def judge(objective="kl") -> ScaleTuning:
    """The objective as the stage measures it, prepared on a fresh float model."""
    config = QuantConfig(**BASE, scale_tuning_steps=1, scale_tuning_batch_windows=2, scale_tuning_objective=objective)
    return ScaleTuning(tiny(), config, list(ids().split(4)), "cpu")


def layers(model):
    return {name: m.packed for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def test_auto_by_default_never_runs_on_a_cpu(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("scale tuning ran")
    monkeypatch.setattr(scale_tuning.ScaleTuning, "__init__", refuse)
    assert QuantConfig().scale_tuning_steps is None
    for algorithm in ("rtn", "gptq"):
        assert run(algorithm).config.quantization_config["scale_tuning_steps"] == 0  # the saved config: what ran
    with pytest.raises(AssertionError, match="scale tuning ran"):  # the stand-in would have caught a run
        run("rtn", **TUNING)


def test_auto_resolves_by_device_memory_and_algorithm():
    from quant_core.scale_tuning_auto import AUTO_STEPS, resolve_scale_tuning, training_bytes

    model, config = tiny(), QuantConfig(**BASE, algorithm="gptq", scale_tuning_batch_windows=2)
    need = training_bytes(model, config)
    assert need > sum(p.numel() for p in model.parameters()) * 4  # at least the fp32 parameters

    def steps(device, calibrated=True, free=None, cfg=config):
        return resolve_scale_tuning(model, cfg, device, calibrated, free_bytes=free).scale_tuning_steps
    assert steps("cuda", free=2 * need) == AUTO_STEPS  # free_bytes given: no GPU needed to decide
    assert steps("cuda", free=need) == 0  # the estimate may take only part of the free memory
    assert steps("cuda", calibrated=False, free=2 * need) == 0  # RTN needs no calibration data: none asked
    assert steps("cpu") == 0
    assert steps("cuda", free=0, cfg=QuantConfig(**BASE, algorithm="gptq", **{**TUNING, "scale_tuning_steps": 5})) == 5
    narrow = QuantConfig(**BASE, algorithm="gptq")  # a step's default 8 windows exceed the batches' 4
    assert steps("cuda", free=2 * need, cfg=narrow) == 0


def test_out_of_memory_keeps_the_algorithms_scales(monkeypatch, caplog):
    def oom(*_args, **_kwargs):
        raise torch.OutOfMemoryError("stand-in")
    monkeypatch.setattr(ScaleTuning, "_train", oom)
    plain, tuned = layers(run("gptq")), layers(run("gptq", **TUNING))
    for name, packed in plain.items():
        assert torch.equal(packed.scales, tuned[name].scales) and torch.equal(packed.qweight, tuned[name].qweight), name
    assert "ran out of memory" in caplog.text


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_codes_and_zero_points_stay_and_the_objective_falls(algorithm):
    plain, tuned = layers(run(algorithm)), layers(run(algorithm, **TUNING))
    assert plain.keys() == tuned.keys() and len(plain) == 14
    for name, packed in plain.items():
        assert torch.equal(packed.qweight, tuned[name].qweight), name
        assert torch.equal(packed.zeros, tuned[name].zeros), name
        assert tuned[name].scales.dtype == packed.scales.dtype == torch.float16
    assert any(not torch.equal(p.scales, tuned[n].scales) for n, p in plain.items())
    kl = judge()
    before, after = kl.loss(run(algorithm)), kl.loss(run(algorithm, **TUNING))
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("algorithm,fields", [("rtn", dict(weight_dtype="nf4", scheme="sym")),  # a codebook
                                              ("rtn", dict(group_size=-1)),  # a scale per output channel
                                              ("gptq", dict(act_order=True)),  # g_idx
                                              ("quantease", dict(outlier_fraction=0.02))])  # sparse outliers
def test_every_layout_keeps_its_tensors_but_the_scales(algorithm, fields):
    plain, tuned = run(algorithm, **fields), run(algorithm, **fields, **TUNING)
    for name, packed in layers(plain).items():
        kept = {k: v for k, v in packed.tensors().items() if k != "scales"}
        assert kept.keys() == {k for k in layers(tuned)[name].tensors() if k != "scales"}
        for key, tensor in kept.items():
            assert torch.equal(tensor, layers(tuned)[name].tensors()[key]), (name, key)
    kl = judge()
    assert kl.loss(tuned) < kl.loss(plain)


def test_cross_entropy_objective_falls_too():
    model = run("rtn")
    config = QuantConfig(algorithm="rtn", **BASE, **TUNING, scale_tuning_objective="ce")
    before, after = ScaleTuning(tiny(), config, list(ids().split(4)), "cpu").run(model, progress=False)
    assert after < before
    assert judge("ce").loss(model) == pytest.approx(after, rel=1e-6)  # the model keeps what was measured


def test_scales_that_end_worse_are_not_kept(monkeypatch):
    def push_up(_self, _model, params, _progress):  # a stand-in for training that ends far off
        with torch.no_grad():
            for p in params:
                p.fill_(2.0)
    monkeypatch.setattr(ScaleTuning, "_train", push_up)
    plain, tuned = layers(run("gptq")), layers(run("gptq", **TUNING))
    for name, packed in plain.items():
        assert torch.equal(packed.scales, tuned[name].scales), name


def test_bad_settings_are_refused():
    for fields, words in [({"scale_tuning_steps": -1}, "scale_tuning_steps"),
                          ({"scale_tuning_steps": 8, "scale_tuning_lr": 0}, "scale_tuning_lr"),
                          ({"scale_tuning_steps": 8, "scale_tuning_batch_windows": 0}, "scale_tuning_batch_windows"),
                          ({"scale_tuning_steps": 8, "scale_tuning_objective": "mse"}, "scale_tuning_objective"),
                          ({"scale_tuning_steps": 0, "scale_tuning_lr": 1e-2}, "scale_tuning_steps=0"),
                          ({"scale_tuning_steps": 8, "scale_tuning_batch_windows": 16},  # would be the batch's 8
                           "raise calibration_batch_size to at least 16")]:
        with pytest.raises(ConfigError, match=words):
            QuantConfig(**fields)


def test_save_and_reload_with_double_quantized_scales(tmp_path):
    model = run("rtn", **TUNING, double_quant=True, double_quant_block=16)
    expected, got, loaded = reloaded_logits(model, tmp_path / "q", ids(2, 16, seed=3))
    assert torch.equal(got, expected)
    config = loaded.config.quantization_config
    assert config["scale_tuning_steps"] == 30 and config["scale_tuning_lr"] == 1e-2


def test_earlier_checkpoints_read_as_untuned_and_settings_may_go_with_auto():
    assert QuantConfig.from_dict({"version": 13, "algorithm": "gptq"}).scale_tuning_steps == 0  # ran without
    assert QuantConfig.from_dict({"version": 14, "algorithm": "gptq", "scale_tuning_steps": 128}).scale_tuning_steps == 128
    assert QuantConfig(scale_tuning_lr=5e-3).scale_tuning_lr == 5e-3  # used if "auto" turns tuning on

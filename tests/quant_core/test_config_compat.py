"""Peers' config objects and dicts: every field of transformers' BitsAndBytesConfig, GPTQConfig and AwqConfig
(walked from the installed classes) and of Intel's WeightOnlyQuantConfig maps onto QuantConfig with its meaning
or is refused by name."""
from __future__ import annotations

import inspect

import pytest
import torch
from transformers import AwqConfig, BitsAndBytesConfig, GPTQConfig

from quant_core import QuantConfig, QuantLinear, WeightOnlyQuantConfig, quantize
from quant_core.config_compat import INTEL_ONLY
from quant_core.errors import ConfigError
from quant_core.formats import get_format

REFUSED = "refused"
NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
PLAIN_GPTQ = {"bits": 4, "act_group_aware": False}

# class -> [(field the case is about, constructor kwargs, expected QuantConfig values or (REFUSED, words))]
CASES = {
    BitsAndBytesConfig: [
        ("load_in_4bit", NF4, dict(weight_dtype="nf4", group_size=64, scheme="sym", scale_dtype="fp32",
                                   algorithm="rtn", double_quant=False, modules_to_not_convert=["lm_head"])),
        ("bnb_4bit_quant_type", {"load_in_4bit": True}, (REFUSED, "FP4 codebook is not E2M1")),
        ("load_in_8bit", {"load_in_8bit": True, "llm_int8_threshold": 0.0},
         dict(weight_dtype="int8", group_size=-1, scheme="sym", scale_dtype="fp32", compute_dtype="int8")),
        ("llm_int8_threshold", {"load_in_8bit": True}, (REFUSED, "outlier decomposition")),
        ("llm_int8_threshold", {**NF4, "llm_int8_threshold": 3.0}, dict(compute_dtype="fp32")),  # 4-bit: unused
        ("llm_int8_skip_modules", {**NF4, "llm_int8_skip_modules": ["mlp.down_proj"]},
         dict(modules_to_not_convert=["mlp.down_proj"])),
        ("llm_int8_enable_fp32_cpu_offload", {**NF4, "llm_int8_enable_fp32_cpu_offload": True}, (REFUSED, "one device")),
        ("llm_int8_has_fp16_weight", {**NF4, "llm_int8_has_fp16_weight": True}, (REFUSED, "fp16 weights")),
        ("bnb_4bit_compute_dtype", {**NF4, "bnb_4bit_compute_dtype": torch.bfloat16}, dict(compute_dtype="bf16")),
        ("bnb_4bit_compute_dtype", {"load_in_8bit": True, "llm_int8_threshold": 0.0,
                                    "bnb_4bit_compute_dtype": torch.bfloat16}, dict(compute_dtype="int8")),
        ("bnb_4bit_use_double_quant", {**NF4, "bnb_4bit_use_double_quant": True},
         dict(double_quant=True, double_quant_block=256)),
        ("bnb_4bit_quant_storage", {**NF4, "bnb_4bit_quant_storage": torch.bfloat16}, (REFUSED, "uint8 bytes")),
    ],
    GPTQConfig: [
        ("bits", PLAIN_GPTQ, dict(algorithm="gptq", weight_dtype="int4_fullrange", group_size=128, scheme="sym",
                                  damp_percent=0.1, act_order=False, true_sequential=True)),
        ("bits", {**PLAIN_GPTQ, "bits": 3}, dict(weight_dtype="int3")),
        ("group_size", {**PLAIN_GPTQ, "group_size": 64}, dict(group_size=64)),
        ("damp_percent", {**PLAIN_GPTQ, "damp_percent": 0.05}, dict(damp_percent=0.05)),
        ("desc_act", {"bits": 4, "desc_act": True}, dict(act_order=True)),
        ("act_group_aware", {"bits": 4}, (REFUSED, "group-aware activation reordering")),
        ("sym", {**PLAIN_GPTQ, "sym": False}, dict(scheme="asym")),
        ("true_sequential", {**PLAIN_GPTQ, "true_sequential": False}, dict(true_sequential=False)),
        ("dataset", {**PLAIN_GPTQ, "dataset": "wikitext2"},
         dict(calibration_dataset="wikitext:wikitext-2-raw-v1@train")),
        ("dataset", {**PLAIN_GPTQ, "dataset": "c4"}, (REFUSED, "allenai/c4")),
        ("dataset", {**PLAIN_GPTQ, "dataset": ["some text"]}, (REFUSED, "calibration=texts")),
        ("tokenizer", {**PLAIN_GPTQ, "tokenizer": "HuggingFaceTB/SmolLM2-135M"}, (REFUSED, "own tokenizer")),
        ("format", {**PLAIN_GPTQ, "format": "gptq_v2"}, (REFUSED, "checkpoint layout")),
        ("meta", {**PLAIN_GPTQ, "meta": {"quantizer": ["optimum:1.0"]}}, dict(algorithm="gptq")),
        ("backend", {**PLAIN_GPTQ, "backend": "marlin"}, (REFUSED, "kernels")),
        ("model_seqlen", {**PLAIN_GPTQ, "model_seqlen": 1024}, dict(seqlen=1024)),
        ("block_name_to_quantize", {**PLAIN_GPTQ, "block_name_to_quantize": "model.layers"}, (REFUSED, "blocks")),
        ("module_name_preceding_first_block", {**PLAIN_GPTQ, "module_name_preceding_first_block": ["model.embed"]},
         (REFUSED, "blocks")),
        ("batch_size", {**PLAIN_GPTQ, "batch_size": 4}, dict(calibration_batch_size=4)),
        ("pad_token_id", {**PLAIN_GPTQ, "pad_token_id": 0}, (REFUSED, "never padded")),
        ("max_input_length", {**PLAIN_GPTQ, "max_input_length": 4096}, (REFUSED, "exllama")),
        ("cache_block_outputs", {**PLAIN_GPTQ, "cache_block_outputs": False}, (REFUSED, "next block")),
        # GPTQConfig() asks for optimum when this is set: the saved dict form only
        ("modules_in_block_to_quantize", {"dict": {**GPTQConfig(**PLAIN_GPTQ).to_dict(),
                                                   "modules_in_block_to_quantize": [["self_attn.q_proj"]]}},
         (REFUSED, "modules_to_not_convert")),
    ],
    AwqConfig: [
        ("zero_point", {}, dict(algorithm="awq", weight_dtype="int4_fullrange", group_size=128, scheme="asym")),
        ("zero_point", {"zero_point": False}, dict(scheme="sym")),
        ("sym", {"zero_point": False, "sym": False}, (REFUSED, "zero_point decides")),
        ("bits", {"bits": 8}, dict(weight_dtype="int8")),
        ("group_size", {"group_size": 64}, dict(group_size=64)),
        ("modules_to_not_convert", {"modules_to_not_convert": ["visual"]},
         dict(modules_to_not_convert=["lm_head", "visual"])),
        ("backend", {"backend": "gemv"}, (REFUSED, "kernels")),
        ("format", {"version": "gemv"}, (REFUSED, "AutoAWQ kernel layout")),
        ("damp_percent", {"damp_percent": 0.2}, (REFUSED, "AWQ does not use it")),
        ("desc_act", {"desc_act": True}, (REFUSED, "AWQ does not use it")),
        ("true_sequential", {"true_sequential": False}, (REFUSED, "AWQ does not use it")),
        ("act_group_aware", {"act_group_aware": False}, dict(algorithm="awq")),  # GPTQ's reordering: no AWQ meaning
        ("dataset", {"dataset": "wikitext2"}, dict(calibration_dataset="wikitext:wikitext-2-raw-v1@train")),
        ("model_seqlen", {"model_seqlen": 256}, dict(seqlen=256)),
        ("batch_size", {"batch_size": 2}, dict(calibration_batch_size=2)),
        ("tokenizer", {"tokenizer": "gpt2"}, (REFUSED, "own tokenizer")),
        ("meta", {"meta": {"quantizer": ["x"]}}, dict(algorithm="awq")),
        ("block_name_to_quantize", {"block_name_to_quantize": "model.layers"}, (REFUSED, "blocks")),
        ("module_name_preceding_first_block", {"module_name_preceding_first_block": ["x"]}, (REFUSED, "blocks")),
        ("pad_token_id", {"pad_token_id": 1}, (REFUSED, "never padded")),
        ("max_input_length", {"max_input_length": 9}, (REFUSED, "exllama")),
        ("cache_block_outputs", {"cache_block_outputs": False}, (REFUSED, "next block")),
        ("modules_in_block_to_quantize", {"modules_in_block_to_quantize": [["self_attn.q_proj"]]},
         (REFUSED, "modules_to_not_convert")),
    ],
}
# fields only the dict form has, or that name the library (every case's to_dict() runs through them)
DICT_ONLY = {"quant_method", "_load_in_4bit", "_load_in_8bit", "checkpoint_format", "version"}


def _fields(cls) -> set[str]:
    """The class's constructor arguments and what its to_dict() writes, as the installed transformers has them."""
    params = {n for n, p in inspect.signature(cls.__init__).parameters.items()
              if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return params | set(cls(**({"bits": 4} if cls is GPTQConfig else {})).to_dict())


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_every_field_of_the_installed_class_has_a_case(cls):
    covered = {field for field, _, _ in CASES[cls]} | DICT_ONLY
    missing = _fields(cls) - covered
    assert not missing, f"{cls.__name__} fields with no mapping or refusal test: {sorted(missing)}"


def _cases():
    return [pytest.param(cls, field, kwargs, expect, id=f"{cls.__name__}-{field}-{i}")
            for cls, cases in CASES.items() for i, (field, kwargs, expect) in enumerate(cases)]


@pytest.mark.parametrize("cls,field,kwargs,expect", _cases())
def test_field_maps_or_is_refused_by_name(cls, field, kwargs, expect):
    if "dict" in kwargs:
        forms = [kwargs["dict"]]
    else:
        obj = cls(**kwargs)
        forms = [obj, obj.to_dict()]
    if isinstance(expect, tuple):
        for form in forms:
            with pytest.raises(ConfigError) as err:
                QuantConfig.coerce(form)
            assert f"{field}=" in str(err.value)  # named
            assert expect[1] in str(err.value)
        return
    config = QuantConfig.coerce(forms[0])
    assert QuantConfig.coerce(forms[-1]) == config  # the saved dict means what the object means
    assert {k: getattr(config, k) for k in expect} == expect


def test_bnb_nf4_quantizes_as_bitsandbytes_blocks_do(tiny_llama):
    """bitsandbytes' 4-bit: blocks of 64 consecutive weights of the flattened weight, fp32 absmax, nearest NF4
    level: groups of 64 where a row holds whole blocks (in_features 64 here; 576, 1536, ... in SmolLM2)."""
    weight = tiny_llama.model.layers[0].mlp.gate_proj.weight.detach().clone()
    quantize(tiny_llama, BitsAndBytesConfig(**NF4), progress=False)  # the object, as transformers' users pass it
    layer = tiny_llama.model.layers[0].mlp.gate_proj
    assert isinstance(layer, QuantLinear) and layer.scales.dtype == torch.float32
    blocks = weight.reshape(-1, 64)
    absmax = blocks.abs().amax(-1, keepdim=True)
    levels = torch.tensor(get_format("nf4").levels)
    nearest = levels[(blocks / absmax).unsqueeze(-1).sub(levels).abs().argmin(-1)]
    torch.testing.assert_close(layer.packed.dequantize(), (nearest * absmax).reshape(weight.shape),
                               rtol=1e-6, atol=1e-7)


def test_bnb_double_quant_stores_scale_codes(tiny_llama):
    quantize(tiny_llama, BitsAndBytesConfig(**NF4, bnb_4bit_use_double_quant=True).to_dict(), progress=False)
    layer = tiny_llama.model.layers[1].self_attn.o_proj
    assert layer.double_quant_block == 256 and "scale_codes" in layer.state_dict()


def test_bnb_with_no_mode_and_unknown_methods_are_refused():
    with pytest.raises(ConfigError, match="neither load_in_4bit nor load_in_8bit"):
        QuantConfig.coerce(BitsAndBytesConfig())
    with pytest.raises(ConfigError, match="quant_method 'hqq'"):
        QuantConfig.coerce({"quant_method": "hqq", "nbits": 4})
    with pytest.raises(ConfigError, match="exllama_config: not a GPTQConfig field"):
        QuantConfig.coerce({**GPTQConfig(**PLAIN_GPTQ).to_dict(), "exllama_config": {"version": 2}})


# Intel's WeightOnlyQuantConfig(...) keywords (intel-extension-for-transformers 1.4, utils/config.py, and the
# calibration keywords its __init__ pops from **kwargs); none of them may be unknown to the alias
INTEL_KEYWORDS = ["llm_int8_skip_modules", "compute_dtype", "weight_dtype", "scale_dtype", "mse_range",
                  "use_double_quant", "double_quant_scale_dtype", "group_size", "scheme", "algorithm", "use_ggml",
                  "use_quant", "use_gptq", "use_autoround", "algorithm_args", "use_neural_speed", "low_bit_model",
                  "tokenizer", "calib_func", "calib_dataset", "calib_dataloader", "calib_iters", "device"]
INTEL_CASES = {
    "llm_int8_skip_modules": ({"llm_int8_skip_modules": ["mlp.gate_proj"]},
                              dict(modules_to_not_convert=["lm_head", "output_layer", "embed_out", "mlp.gate_proj"])),
    "compute_dtype": ({"compute_dtype": torch.bfloat16}, dict(compute_dtype="bf16")),
    "weight_dtype": ({"weight_dtype": "int4_clip"}, dict(weight_dtype="int4_clip")),
    "weight_dtype fp4": ({"weight_dtype": "fp4_e2m1_bnb"}, (REFUSED, "not OCP E2M1")),
    "scale_dtype": ({"scale_dtype": "fp8_e8m0"}, (REFUSED, "scale dtype")),
    "mse_range": ({"mse_range": True}, dict(mse_clip=True)),
    "use_double_quant": ({"use_double_quant": True}, dict(double_quant=True)),
    "double_quant_scale_dtype": ({"use_double_quant": True, "double_quant_scale_dtype": "bf16"}, (REFUSED, "fp32")),
    "group_size": ({"group_size": 128}, dict(group_size=128)),
    "scheme": ({"weight_dtype": "int4", "scheme": "asym"}, dict(scheme="asym")),
    "algorithm": ({"algorithm": "GPTQ"}, dict(algorithm="gptq")),
    "use_ggml": ({"use_ggml": True}, (REFUSED, "GGUF")),
    "use_quant": ({"use_quant": False}, (REFUSED, "quantization_config=None")),
    "use_gptq": ({"use_gptq": True}, (REFUSED, "GPTQ checkpoint")),
    "use_autoround": ({"use_autoround": True}, (REFUSED, "AutoRound")),
    "algorithm_args": ({"algorithm": "GPTQ", "algorithm_args": {"act_order": True, "percdamp": 0.02, "nsamples": 64,
                                                                 "pad_max_length": 256, "use_max_length": True}},
                       dict(act_order=True, damp_percent=0.02, n_samples=64, seqlen=256)),
    "use_neural_speed": ({"use_neural_speed": True}, (REFUSED, "Neural Speed")),
    "low_bit_model": ({"low_bit_model": True}, (REFUSED, "low-bit checkpoint")),
    "tokenizer": ({"tokenizer": object()}, (REFUSED, "own tokenizer")),
    "calib_func": ({"calib_func": print}, (REFUSED, "calibration=")),
    "calib_dataset": ({"calib_dataset": "texts.txt"}, dict(calibration_dataset="texts.txt")),
    "calib_dataloader": ({"calib_dataloader": [1]}, (REFUSED, "calibration=")),
    "calib_iters": ({"calib_iters": 32}, dict(n_samples=32)),
    "device": ({"device": "xpu"}, (REFUSED, "device=")),
}


def test_every_intel_keyword_has_a_case():
    assert set(INTEL_KEYWORDS) <= set(INTEL_CASES)


@pytest.mark.parametrize("name", list(INTEL_CASES))
def test_intel_keyword_maps_or_is_refused_by_name(name):
    kwargs, expect = INTEL_CASES[name]
    if isinstance(expect, tuple):
        with pytest.raises(ConfigError, match=name.split()[0]) as err:
            WeightOnlyQuantConfig(**kwargs)
        assert expect[1] in str(err.value)
        return
    config = WeightOnlyQuantConfig(**kwargs)
    assert {k: getattr(config, k) for k in expect} == expect
    if INTEL_ONLY & kwargs.keys():  # a dict naming an Intel-only keyword is read as Intel's, with its defaults
        assert QuantConfig.coerce(kwargs) == config


def test_intel_alias_takes_intels_defaults_and_saves_what_ran(tiny_llama):
    """Intel's documented defaults (PyTorch path): nf4, groups of 32, sym, RTN, fp32 compute and scales."""
    conf = WeightOnlyQuantConfig()
    assert isinstance(conf, QuantConfig)
    assert (conf.weight_dtype, conf.group_size, conf.scheme, conf.algorithm, conf.compute_dtype, conf.scale_dtype) \
        == ("nf4", 32, "sym", "rtn", "fp32", "fp32")
    assert QuantConfig().group_size == 128  # ours keeps quantllm's default
    quantize(tiny_llama, conf, progress=False)
    saved = tiny_llama.config.quantization_config
    assert (saved["group_size"], saved["weight_dtype"]) == (32, "nf4")
    assert tiny_llama.model.layers[0].mlp.up_proj.group_size == 32
    ran = conf.model_copy(update={"scale_tuning_steps": 0})  # "auto" saved as what ran: no scale tuning after RTN
    assert QuantConfig.from_dict(saved) == ran and ran == QuantConfig.from_dict(saved)

"""Peers' quantization configs as QuantConfig fields: each field maps onto ours with its meaning, or is
refused by name with the reason.

Read here: transformers' ``BitsAndBytesConfig``, ``GPTQConfig`` and ``AwqConfig`` (objects, or their
``to_dict()`` as a saved model's ``quantization_config`` holds it) and the keywords of Intel's
``WeightOnlyQuantConfig`` (intel-extension-for-transformers), whose left-out keywords take Intel's
defaults (``INTEL_DEFAULTS``). A peer's object carries every field whether the user set it or not, so a
refused field passes where its value asks for nothing (``None``, ``False``, a default with no effect);
a default that does ask for something quantllm does not do is refused too, naming the value that
passes (bitsandbytes' ``llm_int8_threshold=6.0``, GPTQModel's ``act_group_aware=True``).

This module returns plain dicts of QuantConfig field values: ``config.py`` calls it, never the reverse.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from .errors import ConfigError


class Refusal(Exception):
    """A value quantllm cannot honour; the message says why and what passes."""


@dataclass(frozen=True)
class Rule:
    kind: str  # "mapped": the value becomes QuantConfig fields (some values may still be refused); "refused"
    apply: Callable[[Any, dict], dict]  # (value, every field of the peer's config) -> QuantConfig fields


def plain(value):
    """Enums as their values and torch dtypes as their names ("bfloat16"), so rules compare plain data."""
    if isinstance(value, Enum):
        return value.value
    text = str(value)
    return text.removeprefix("torch.") if text.startswith("torch.") else value


def _is_one_of(value, choices) -> bool:
    # identity for None/bools: pad_token_id=0 is not False
    return any(value is c or (type(value) is type(c) and value == c) for c in choices)


def mapped(fn: Callable[[Any, dict], dict]) -> Rule:
    return Rule("mapped", fn)


def same(field: str, convert: Callable = plain, skip_none: bool = True) -> Rule:
    """The peer's field means ours: copied (``None`` leaves ours at its default)."""
    return mapped(lambda v, _: {} if v is None and skip_none else {field: convert(v)})


def nothing() -> Rule:
    """A field with no effect on the quantized weights (which library, tool versions): maps onto no field."""
    return mapped(lambda v, _: {})


def refused(why: str, inert=(None, False)) -> Rule:
    """Refused unless the value asks for nothing: one of ``inert``, or ``inert(value, fields)`` is true."""
    def apply(value, fields):
        ok = inert(value, fields) if callable(inert) else _is_one_of(value, inert)
        if not ok:
            raise Refusal(why)
        return {}
    return Rule("refused", apply)


def translate(peer: str, values: dict, table: dict[str, Rule]) -> dict:
    """Every field of ``values`` through its rule; one ConfigError naming every field refused."""
    fields, problems = {}, []
    for name, value in values.items():
        rule = table.get(name)
        if rule is None:
            problems.append(f"{name}: not a {peer} field quantllm knows; remove it")
            continue
        try:
            fields.update(rule.apply(plain(value), values))
        except Refusal as why:
            problems.append(f"{name}={plain(value)!r}: {why}")
    if problems:
        raise ConfigError(f"{peer}: " + "; ".join(problems))
    return fields


# -- shared reasons --------------------------------------------------------------------------------------
KERNEL_CHOICE = ("picks one of the peer library's kernels; quantllm chooses its own per layer "
                 "(QuantConfig(kernel=...) forces one of quantllm's)")
TOKENIZER = ("quantllm tokenizes calibration text with the model's own tokenizer; remove it, or pass another "
             "as quantize(model, config, tokenizer=...)")
OWN_BLOCKS = "quantllm finds a model's decoder blocks itself, from its architecture; remove it"
BITS = {2: "int2", 3: "int3", 4: "int4_fullrange", 8: "int8"}


def _bits(v, _):
    if v not in BITS:
        raise Refusal(f"quantllm quantizes to {', '.join(map(str, BITS))} bits")
    return {"weight_dtype": BITS[v]}


def _gptq_dataset(v, _):
    if v is None:
        return {}
    if v == "wikitext2":  # what GPTQ's own loader reads for this name
        return {"calibration_dataset": "wikitext:wikitext-2-raw-v1@train"}
    if isinstance(v, str):
        raise Refusal(f"GPTQ's {v!r} is one shard of allenai/c4 read through data_files, which "
                      f"calibration_dataset cannot name; pass the texts as quantize(model, config, calibration=...)")
    raise Refusal("texts are not a config field here; pass them as quantize(model, config, calibration=texts)")


GPTQ_RULES: dict[str, Rule] = {
    "quant_method": mapped(lambda v, _: {"algorithm": "gptq"}),
    "bits": mapped(_bits),
    "group_size": same("group_size"),
    "damp_percent": same("damp_percent"),
    "desc_act": same("act_order"),
    "static_groups": same("static_groups"),  # AutoGPTQ's quantize_config.json
    "sym": mapped(lambda v, _: {"scheme": "sym" if v else "asym"}),
    "true_sequential": same("true_sequential"),
    "dataset": mapped(_gptq_dataset),
    "model_seqlen": same("seqlen"),
    "batch_size": same("calibration_batch_size"),
    "meta": nothing(),  # tool versions: GPTQConfig documents that they do not contribute to quantization
    "tokenizer": refused(TOKENIZER),
    "act_group_aware": refused(
        "GPTQModel's group-aware activation reordering (GAR) is not part of quantllm's GPTQ; pass "
        "act_group_aware=False for plain GPTQ, or desc_act=True for act-order",
        inert=lambda v, f: v is False or bool(f.get("desc_act"))),
    "format": refused("a GPTQModel checkpoint layout; quantllm saves its own, and `quantllm export --to gptq` "
                      "writes 'gptq' (v1)", inert=("gptq",)),
    "backend": refused(KERNEL_CHOICE, inert=(None, "auto")),
    "block_name_to_quantize": refused(OWN_BLOCKS),
    "module_name_preceding_first_block": refused(OWN_BLOCKS),
    "pad_token_id": refused("quantllm's calibration windows all hold seqlen tokens and are never padded"),
    "max_input_length": refused("sizes the exllama kernel's buffer; quantllm's kernels need none"),
    "cache_block_outputs": refused("quantllm always carries each block's quantized outputs to the next block",
                                   inert=(True,)),
    "modules_in_block_to_quantize": refused("quantllm quantizes every linear of a block, in the order of its "
                                            "architecture table; keep layers float with modules_to_not_convert"),
    "model_name_or_path": refused("names a GPTQ checkpoint's files: to load one, pass its folder as the model"),
    "model_file_base_name": refused("names a GPTQ checkpoint's files: to load one, pass its folder as the model"),
}
GPTQ_RULES["checkpoint_format"] = GPTQ_RULES["format"]

_GPTQ_ONLY = "a GPTQ setting AwqConfig inherits from GPTQConfig; AWQ does not use it"
AWQ_RULES: dict[str, Rule] = {
    **GPTQ_RULES,
    "quant_method": mapped(lambda v, _: {"algorithm": "awq"}),
    "zero_point": mapped(lambda v, _: {"scheme": "asym" if v else "sym"}),
    # AwqConfig inherits GPTQ's sym=True; zero_point decides
    "sym": refused("contradicts zero_point: AwqConfig's zero_point decides the scheme",
                   inert=lambda v, f: v is True or v == (not f.get("zero_point", True))),
    # AutoAWQ quantizes only the decoder blocks' linears, so the lm_head stays float too
    "modules_to_not_convert": mapped(lambda v, _: {} if not v else {"modules_to_not_convert": ["lm_head", *v]}),
    "format": refused("an AutoAWQ kernel layout; quantllm saves its own, and `quantllm export --to awq` writes "
                      "GEMM", inert=("gemm",)),
    "damp_percent": refused(_GPTQ_ONLY, inert=(0.1,)),
    "desc_act": refused(_GPTQ_ONLY),
    "act_group_aware": nothing(),  # GPTQModel's reordering for GPTQ: no meaning for AWQ, whatever its value
    "true_sequential": refused(_GPTQ_ONLY, inert=(True,)),
}
AWQ_RULES["version"] = AWQ_RULES["format"]
del AWQ_RULES["checkpoint_format"], AWQ_RULES["static_groups"]


# -- bitsandbytes ----------------------------------------------------------------------------------------
def _bnb4(fields: dict) -> bool:
    return bool(fields.get("load_in_4bit") or fields.get("_load_in_4bit"))


def _bnb8(fields: dict) -> bool:
    return bool(fields.get("load_in_8bit") or fields.get("_load_in_8bit"))


def _only_4bit(fn):
    """bitsandbytes reads its bnb_4bit_* fields only in 4-bit mode; elsewhere they map onto nothing."""
    return mapped(lambda v, f: fn(v) if _bnb4(f) else {})


def _bnb_quant_type(v):
    if v == "nf4":
        return {"weight_dtype": "nf4"}
    raise Refusal("bitsandbytes' FP4 codebook is not E2M1 (its smallest level is 0.0052 x absmax, E2M1's 0.083 "
                  "x absmax); pass bnb_4bit_quant_type='nf4', or QuantConfig(weight_dtype='fp4_e2m1', "
                  "group_size=64) for E2M1")


def _int8_threshold(v, f):
    if not _bnb8(f):
        return {}
    if v == 0:  # LLM.int8() without outlier columns: int8 weights (per row) times int8 activations (per token)
        return {"compute_dtype": "int8"}
    raise Refusal("LLM.int8() keeps every activation column with a value above the threshold in fp16 (outlier "
                  "decomposition of the int8 matmul), which is not weight-only quantization; pass "
                  "llm_int8_threshold=0.0 for its plain int8 x int8 matmul (compute_dtype='int8'), or "
                  "QuantConfig(weight_dtype='int8', group_size=-1) for int8 weights with float activations")


# bitsandbytes' 4-bit blocks are 64 consecutive weights of a row, with an fp32 absmax; its 8-bit is per row
BNB_4BIT = {"group_size": 64, "scheme": "sym", "scale_dtype": "fp32"}
BNB_8BIT = {"weight_dtype": "int8", "group_size": -1, "scheme": "sym", "scale_dtype": "fp32"}
BNB_RULES: dict[str, Rule] = {
    "quant_method": mapped(lambda v, _: {"algorithm": "rtn"}),
    "load_in_4bit": mapped(lambda v, _: dict(BNB_4BIT) if v else {}),
    "load_in_8bit": mapped(lambda v, _: dict(BNB_8BIT) if v else {}),
    "llm_int8_threshold": mapped(_int8_threshold),
    # None: transformers keeps the output embedding (lm_head) float, as QuantConfig's default does
    "llm_int8_skip_modules": mapped(lambda v, _: {} if v is None else {"modules_to_not_convert": list(v)}),
    "bnb_4bit_compute_dtype": _only_4bit(lambda v: {} if v is None else {"compute_dtype": v}),
    "bnb_4bit_quant_type": _only_4bit(_bnb_quant_type),
    "bnb_4bit_use_double_quant": _only_4bit(lambda v: {"double_quant": True, "double_quant_block": 256} if v else {}),
    "llm_int8_enable_fp32_cpu_offload": refused(
        "offloads layers to the CPU in fp32 when a device_map spans a GPU and the CPU; quantllm keeps a model "
        "on one device and quantizes every linear it holds"),
    "llm_int8_has_fp16_weight": refused("keeps fp16 weights beside the int8 ones for training; quantllm's "
                                        "layers hold only packed weights"),
    "bnb_4bit_quant_storage": refused("the dtype bitsandbytes packs 4-bit codes into (bf16 storage lets FSDP "
                                      "shard them); quantllm packs codes into uint8 bytes",
                                      inert=(None, "uint8")),
}
BNB_RULES["_load_in_4bit"] = BNB_RULES["load_in_4bit"]  # to_dict() holds both spellings
BNB_RULES["_load_in_8bit"] = BNB_RULES["load_in_8bit"]


def bnb_fields(values: dict) -> dict:
    if not (_bnb4(values) or _bnb8(values)):
        raise ConfigError("BitsAndBytesConfig with neither load_in_4bit nor load_in_8bit quantizes nothing; "
                          "set one of them, or pass quantization_config=None for the float model")
    if _bnb4(values) and _bnb8(values):
        raise ConfigError("BitsAndBytesConfig: load_in_4bit and load_in_8bit are both set; choose one")
    return translate("BitsAndBytesConfig", values, BNB_RULES)


# -- Intel's WeightOnlyQuantConfig -----------------------------------------------------------------------
# Intel's defaults on the PyTorch path that LangChain's WeightOnlyQuantPipeline takes (use_llm_runtime=False:
# WeightOnlyQuantConfig.post_init): nf4, groups of 32, sym, RTN, fp32 compute and scales, the output layers
# float. Calibration keeps quantllm's offline default (Intel's is NeelNanda/pile-10k from the hub).
INTEL_DEFAULTS = {"weight_dtype": "nf4", "compute_dtype": "fp32", "scale_dtype": "fp32", "group_size": 32,
                  "scheme": "sym", "algorithm": "rtn",
                  "modules_to_not_convert": ["lm_head", "output_layer", "embed_out"]}
_CALIBRATE_WITH = ("pass calibration data as quantize(model, config, calibration=...) (texts, a text file or a "
                   "datasets.Dataset), or calib_dataset='name' / a file")
# Intel's GPTQ algorithm_args -> ours
INTEL_GPTQ_ARGS = {"act_order": "act_order", "percdamp": "damp_percent", "block_size": "block_size",
                   "nsamples": "n_samples", "pad_max_length": "seqlen", "static_groups": "static_groups",
                   "true_sequential": "true_sequential"}


def _intel_weight_dtype(v, _):
    if v in ("fp4_e2m1", "fp4_e2m1_bnb", "fp4"):
        # Neural Compressor's tables (which Intel's PyTorch path quantizes with): FP4_E2M1 and FP4_BNB keep
        # +-0.0625 where OCP E2M1, quantllm's fp4_e2m1, has +-0.5 (and FP4_BNB has no +-1, +-1.5)
        raise Refusal(f"Intel's {v} codebook is not OCP E2M1 (its smallest nonzero level is 0.0625, E2M1's 0.5 of "
                      f"the same scale); pass weight_dtype='nf4', or QuantConfig(weight_dtype='fp4_e2m1') for E2M1")
    return {} if v is None else {"weight_dtype": v}


def _algorithm_args(v, _):
    if not v:
        return {}
    out, problems = {}, []
    for key, value in dict(v).items():
        if key in INTEL_GPTQ_ARGS:
            out[INTEL_GPTQ_ARGS[key]] = value
        elif key == "use_max_length" and value is True:  # windows of exactly pad_max_length tokens: ours
            continue
        else:
            problems.append(f"algorithm_args[{key!r}]")
    if problems:
        raise Refusal(f"{', '.join(problems)}: not among the Intel GPTQ arguments quantllm maps "
                      f"({', '.join(INTEL_GPTQ_ARGS)}, use_max_length=True)")
    return out


def _skip_modules(v, fields):
    if not v:
        return {}
    base = fields.get("modules_to_not_convert") or INTEL_DEFAULTS["modules_to_not_convert"]
    return {"modules_to_not_convert": [*base, *v]}  # Intel adds these to its output layers


INTEL_RULES: dict[str, Rule] = {
    **{name: same(name) for name in ("compute_dtype", "scale_dtype", "group_size", "scheme", "algorithm")},
    "weight_dtype": mapped(_intel_weight_dtype),
    "llm_int8_skip_modules": mapped(_skip_modules),
    "mse_range": same("mse_clip"),
    "use_double_quant": same("double_quant"),
    "calib_dataset": same("calibration_dataset"),
    "calib_iters": same("n_samples"),
    "algorithm_args": mapped(_algorithm_args),
    "double_quant_scale_dtype": refused("quantllm's second-level scales are fp32", inert=(None, "fp32", "float32")),
    "calib_func": refused(_CALIBRATE_WITH),
    "calib_dataloader": refused(_CALIBRATE_WITH),
    "tokenizer": refused(TOKENIZER),
    "use_ggml": refused("Neural Speed's GGML layout; `quantllm export --to gguf` writes GGUF for llama.cpp"),
    "use_quant": refused("use_quant=False loads without quantizing: pass quantization_config=None",
                         inert=(True,)),
    "use_gptq": refused("loads a GPTQ checkpoint: pass its folder as the model, quantllm reads GPTQ checkpoints"),
    "use_autoround": refused("loads an AutoRound checkpoint, which quantllm does not read"),
    "use_neural_speed": refused("Intel's Neural Speed C++ runtime is not part of quantllm, which runs its own kernels"),
    "use_llm_runtime": refused("Intel's Neural Speed C++ runtime is not part of quantllm, which runs its own kernels"),
    "low_bit_model": refused("marks an Intel low-bit checkpoint being loaded: pass a quantllm folder as the model"),
    "device": refused("the device is chosen where the model loads (device= / device_map=), not in the config",
                      inert=(None, "auto", "cpu")),
}
INTEL_ONLY = frozenset(INTEL_RULES) - frozenset(INTEL_DEFAULTS)


def intel_fields(values: dict) -> dict:
    """Intel's keywords (and QuantConfig's own names, which pass as they are) -> QuantConfig fields, with
    Intel's defaults for what is left out."""
    intel = {k: v for k, v in values.items() if k in INTEL_RULES}
    ours = {k: v for k, v in values.items() if k not in INTEL_RULES}
    given = translate("WeightOnlyQuantConfig", intel, INTEL_RULES)
    return {**INTEL_DEFAULTS, **ours, **given}


# -- what coerce calls -------------------------------------------------------------------------------------
PEERS = {"bitsandbytes": bnb_fields,
         "gptq": lambda values: translate("GPTQConfig", values, GPTQ_RULES),
         "awq": lambda values: translate("AwqConfig", values, AWQ_RULES)}


def as_values(config) -> dict | None:
    """A peer's config as a dict of its fields: a dict as it is, an object through its ``to_dict()``."""
    if isinstance(config, dict):
        return config
    to_dict = getattr(config, "to_dict", None)
    peer_object = hasattr(config, "quant_method") or type(config).__name__ == "WeightOnlyQuantConfig"
    return dict(to_dict()) if callable(to_dict) and peer_object else None


def peer_fields(config) -> dict | None:
    """QuantConfig fields for a peer's config or its dict; None where ``config`` is none of theirs
    (then it is ours, or not a config at all)."""
    values = as_values(config)
    if values is None:
        return None
    method = plain(values.get("quant_method"))
    if method in PEERS:
        return PEERS[method](values)
    if method is None and (type(config).__name__ == "WeightOnlyQuantConfig" or INTEL_ONLY & values.keys()):
        return intel_fields(values)
    if method not in (None, "quantllm"):
        raise ConfigError(f"quant_method {method!r}: quantllm maps bitsandbytes', GPTQ's and AWQ's configs, "
                          f"Intel's WeightOnlyQuantConfig and its own; pass a QuantConfig")
    return None

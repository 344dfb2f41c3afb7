"""QuantConfig: the validated description of one quantization, and its dict form."""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .algorithm_fields import MAX_CALIBRATION_TOKENS, MAX_COUNT, SCALE_TUNING_SETTINGS, AlgorithmFields
from .algorithm_settings import ALGORITHM_SETTINGS, ALGORITHMS
from .config_compat import intel_fields, peer_fields
from .config_versions import CONFIG_VERSION, read_saved_version
from .double_quant import DEFAULT_BLOCK
from .errors import ConfigError
from .formats import ALIASES, FORMATS, get_format
from .kernel_names import KERNELS

COMPUTE_DTYPES = ("auto", "fp32", "bf16", "fp16", "int8")
SCALE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_COMPUTE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# Upper bounds no useful quantization reaches: larger values are typos that would run for hours or
# allocate terabytes before failing. Whether a group fits a layer is checked per layer by quantize().
MAX_GROUP_SIZE = 1 << 16  # wider than any layer of today's models; -1 is one group per row
MAX_SEED = 2 ** 63 - 1  # what every generator takes


def _choice(value: str, choices, what: str, aliases: dict | None = None) -> str:
    key = str(value).lower().removeprefix("torch.")  # torch.bfloat16 as transformers' users write it
    key = (aliases or {}).get(key, key)
    if key not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(choices)}")
    return key


class GeneralFields(BaseModel):
    """QuantConfig's fields for every algorithm: format, kernel, head, double quantization, calibration text."""

    version: int = Field(CONFIG_VERSION, description="Format version of this config, set by quantllm.")
    algorithm: str = Field("rtn", description="rtn | gptq | awq | teq | quantease | gptq_quantease | signround")
    weight_dtype: str = Field("int4_fullrange", description="Weight format; see quant_core.formats.FORMATS.")
    compute_dtype: str = Field("auto", description="auto | fp32 | bf16 | fp16 (GPU) | int8 (activations quantized per token).")
    group_size: int = Field(128, description="Input columns per scale; -1 for one scale per output channel.")
    scheme: Literal["sym", "asym"] = Field("sym", description="sym: fixed zero point; asym: a zero point per group.")
    scale_dtype: str = Field("fp16", description="Stored scale precision: fp16 | bf16 | fp32.")
    modules_to_not_convert: list[str] = Field(default_factory=lambda: ["lm_head"],
                                              description="Linear layers whose name contains one of these stay float.")
    mse_clip: bool = Field(False, description="Search a per-group clipping ratio that minimises squared error "
                           "(RTN's and GPTQ's scales); on by default for GPTQ at 3 bits and below.")
    kernel: str | None = Field(None, description="Force a kernel by name (error if it cannot run a layer).")
    head_weight_dtype: str | None = Field("int8", description="Format of the output head (lm_head) while "
                                          "modules_to_not_convert keeps it out of weight_dtype (int8: +0.16 % "
                                          "perplexity on SmolLM2-135M, a quarter of the fp32 head's bytes per token); "
                                          "None leaves it float; "
                                          "8-bit formats (int8) get one scale per row, narrower ones (int4_fullrange) "
                                          "groups of group_size; RTN, symmetric. A tied input embedding reads the rows "
                                          "of the same packed head.")
    double_quant: bool = Field(False, description="Store group scales as 8-bit codes with an fp32 scale per block "
                               "of double_quant_block groups (bitsandbytes' bnb_4bit_use_double_quant); decoded once "
                               "at load into the scale dtype.")
    double_quant_block: int = Field(DEFAULT_BLOCK, gt=0, le=1 << 16, description="Double quantization: group scales "
                                    "per second-level scale.")
    # Calibration (GPTQ, AWQ, TEQ); see quant_core.calibration.
    calibration_dataset: str | None = Field(None, description="Calibration text: None (the shipped text: Wikipedia prose + model-written text), "
                                            "a text file, or a Hugging Face dataset 'name[:config][@split]'.")
    n_samples: int = Field(128, gt=0, le=MAX_COUNT, description="Calibration windows.")
    seqlen: int = Field(512, gt=0, le=1 << 17, description="Tokens per calibration window.")
    calibration_seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed for drawing calibration windows.")
    calibration_batch_size: int = Field(8, gt=0, le=MAX_COUNT, description="Calibration windows per forward pass "
                                        "(8: a third of one window's CPU time per window on SmolLM2).")
    calibration_dtype: Literal["fp32", "bf16", "auto"] = Field(
        "auto", description="Precision of the calibration forwards (every algorithm's statistics, AWQ's scale "
        "search, the block outputs): bf16 runs their matmuls in bf16 (autocast; weights, statistics and solvers "
        "stay fp32), about 2x faster where the CPU has bf16 units (quant_core.cpu_features.native_bf16); auto: "
        "bf16 on such a CPU, fp32 elsewhere (GPUs included); perplexity measured equal to fp32's "
        "(benchmarks/results/quality.md, rows '... bf16 calibration').")
    calibration_skip_tokens: int = Field(0, ge=0, description="Leading tokens of every calibration window left out "
                                         "of the statistics an algorithm fits (the attention-sink token's "
                                         "activations can dominate a layer's Hessian).")


class QuantConfig(AlgorithmFields, GeneralFields):
    """How to quantize a model's linear weights.

    ``QuantConfig()`` is int4 (full range), groups of 128, symmetric, RTN, with
    ``lm_head`` in int8 (one scale per row; ``head_weight_dtype=None`` leaves it float).
    Names used by Intel's ``WeightOnlyQuantConfig``
    (``weight_dtype="nf4"``, ``compute_dtype="bf16"``, ``algorithm="RTN"``) are accepted.
    """
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    # Fields: GeneralFields', then AlgorithmFields' (pydantic orders them from the last base), as saved.

    def __init__(self, **data):
        try:
            super().__init__(**data)
        except ValidationError as exc:  # one line per bad field, as a ConfigError (also a ValueError)
            raise ConfigError(_problems(exc)) from None

    def __setattr__(self, name, value):
        try:  # assignment is validated too (validate_assignment): the same ConfigError
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise ConfigError(_problems(exc)) from None

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v, info):
        # pydantic reads True as 1: n_samples=True would calibrate on one window
        if isinstance(v, bool) and cls.model_fields[info.field_name].annotation in (int, float, float | None):
            raise ValueError(f"must be a number, not a bool ({v})")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v):
        if v != CONFIG_VERSION:  # a checkpoint saved with another version is refused by every later load
            raise ValueError(f"version is set by quantllm (the config format's version, {CONFIG_VERSION}), not "
                             f"by users; leave it out (QuantConfig.from_dict reads older saved versions)")
        return v

    @field_validator("kernel")
    @classmethod
    def _kernel(cls, v):
        if v is not None and v not in KERNELS:  # saved, it would make every later load of the model fail
            raise ValueError(f"unknown kernel {v!r}; known kernels: {', '.join(KERNELS)} "
                             f"(or leave kernel unset to let quantllm choose per layer)")
        return v

    @field_validator("modules_to_not_convert")
    @classmethod
    def _modules(cls, v):
        if any(not name.strip() for name in v):
            raise ValueError("holds an empty name, which is part of every layer's name: nothing would be "
                             "quantized; remove it (or pass names such as 'lm_head')")
        return v

    @field_validator("calibration_dataset")
    @classmethod
    def _calibration_dataset(cls, v):
        if v is not None and not v.strip():
            raise ValueError("calibration_dataset is empty; leave it unset for the shipped sample, or give a "
                             "text file or a Hugging Face dataset 'name[:config][@split]'")
        return v

    @field_validator("algorithm", mode="before")
    @classmethod
    def _algorithm(cls, v):
        return _choice(v, ALGORITHMS, "algorithm")

    @field_validator("weight_dtype", mode="before")
    @classmethod
    def _weight_dtype(cls, v):
        return get_format(str(v)).name

    @field_validator("head_weight_dtype", mode="before")
    @classmethod
    def _head_weight_dtype(cls, v):
        if v is None or str(v).lower() in ("none", "null", "float"):  # also as the command line spells it
            return None
        return get_format(str(v)).name

    @field_validator("compute_dtype", mode="before")
    @classmethod
    def _compute_dtype(cls, v):
        return _choice(v, COMPUTE_DTYPES, "compute dtype", _COMPUTE_ALIASES)

    @field_validator("scale_dtype", mode="before")
    @classmethod
    def _scale_dtype(cls, v):
        return _choice(v, tuple(SCALE_DTYPES), "scale dtype", _COMPUTE_ALIASES)

    @field_validator("scheme", mode="before")
    @classmethod
    def _scheme(cls, v):
        return _choice(v, ("sym", "asym"), "scheme")

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v):
        if v != -1 and (v <= 0 or v % 8 or v > MAX_GROUP_SIZE):
            raise ValueError(f"group_size must be -1 (per output channel) or a positive multiple of 8 "
                             f"up to {MAX_GROUP_SIZE}, such as 32, 64, 128, 256; got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _gptq_low_bit_defaults(cls, data):
        """GPTQ at 3 bits and below: act_order and mse_clip on unless given. The pair (with the default
        Hessian blend) measured better on both texts in every such column (README: int3 g128 asym 39.71 /
        34.10 against 50.23 / 44.45, int3 per-channel 74.73 / 87.83 against 112.85 / 105.26, int2 g64 174.60 /
        234.43 against 12481 / 4406), but worse at 4 bits with asym groups and per-channel scales."""
        if isinstance(data, dict) and data.get("algorithm") == "gptq" and _bits(data.get("weight_dtype")) <= 3:
            return {"act_order": True, "mse_clip": True, **data}
        return data

    @model_validator(mode="after")
    def _calibration_tokens(self):
        tokens = self.n_samples * self.seqlen
        if tokens > MAX_CALIBRATION_TOKENS:
            raise ValueError(f"n_samples * seqlen = {tokens} calibration tokens, more than the "
                             f"{MAX_CALIBRATION_TOKENS} quantllm accepts; lower n_samples or seqlen")
        if self.calibration_skip_tokens >= self.seqlen:  # every token skipped: no statistics to fit
            raise ValueError(f"calibration_skip_tokens={self.calibration_skip_tokens} leaves nothing of windows of "
                             f"seqlen={self.seqlen} tokens; skip fewer tokens than seqlen")
        return self

    @model_validator(mode="after")
    def _combination(self):
        fmt = get_format(self.weight_dtype)
        if fmt.is_codebook and self.scheme == "asym":
            raise ValueError(f"{fmt.name} is a codebook format and has no zero point: use scheme='sym', "
                             f"or an int format ({', '.join(n for n, f in FORMATS.items() if not f.is_codebook)}) for asym")
        return self

    @model_validator(mode="after")
    def _signround_formats(self):
        if self.algorithm == "signround" and self.format.is_codebook:
            raise ValueError(f"algorithm='signround' learns offsets on an integer grid and does not run "
                             f"{self.format.name}; use an int format (int4_fullrange, int3, ...) or "
                             f"algorithm='gptq' / 'quantease' for {self.format.name}")
        # a step's mini-batch is drawn from one calibration batch: more windows would be silently fewer
        if self.algorithm == "signround" and self.signround_batch_windows > self.calibration_batch_size:
            raise ValueError(f"signround_batch_windows={self.signround_batch_windows} exceeds "
                             f"calibration_batch_size={self.calibration_batch_size} (a step draws its windows from "
                             f"one calibration batch): raise calibration_batch_size to at least "
                             f"{self.signround_batch_windows}, or ask for fewer windows")
        return self

    @model_validator(mode="after")
    def _settings_of_other_algorithms(self):
        mine = set(ALGORITHM_SETTINGS[self.algorithm])
        problems = [f"{name}={getattr(self, name)!r} is a setting of algorithm="
                    + " or ".join(f"'{a}'" for a in _owners(name))
                    for name in dict.fromkeys(n for names in ALGORITHM_SETTINGS.values() for n in names)
                    if name not in mine and getattr(self, name) != type(self).model_fields[name].default]
        if problems:
            raise ValueError(f"{'; '.join(problems)}, not of '{self.algorithm}': choose that algorithm "
                             f"or leave the setting at its default")
        return self

    @model_validator(mode="after")
    def _double_quant_settings(self):
        if not self.double_quant and self.double_quant_block != DEFAULT_BLOCK:
            raise ValueError(f"double_quant_block={self.double_quant_block} is a setting of double_quant=True; "
                             f"set double_quant=True or leave it at {DEFAULT_BLOCK}")
        return self

    @model_validator(mode="after")
    def _scale_tuning_settings(self):
        changed = [f"{name}={getattr(self, name)!r}" for name in SCALE_TUNING_SETTINGS
                   if getattr(self, name) != type(self).model_fields[name].default]
        if self.scale_tuning_steps == 0 and changed:  # else silently ignored: tuning is off at 0 steps
            raise ValueError(f"{', '.join(changed)} set while scale_tuning_steps=0 (scale tuning off): set "
                             f"scale_tuning_steps (e.g. 128) or leave these at their defaults")
        if self.scale_tuning_steps and self.scale_tuning_batch_windows > self.calibration_batch_size:  # else fewer, silently
            raise ValueError(f"scale_tuning_batch_windows={self.scale_tuning_batch_windows} exceeds "
                             f"calibration_batch_size={self.calibration_batch_size} (a step's windows come from one "
                             f"calibration batch): raise calibration_batch_size to at least "
                             f"{self.scale_tuning_batch_windows}, or ask for fewer windows")
        return self

    def as_ran(self, ran: "QuantConfig") -> "QuantConfig":
        """This config with the fields it left to the run (``DECIDED_AT_RUN``) as ``ran``, a config that
        quantized a model, resolved them: what asking for this config on that model means."""
        return self.model_copy(update={name: getattr(ran, name) for name, auto in DECIDED_AT_RUN.items()
                                       if getattr(self, name) == auto})

    def __eq__(self, other):  # by value: a WeightOnlyQuantConfig equals the QuantConfig it saves as
        return isinstance(other, QuantConfig) and self.model_dump() == other.model_dump()

    @property
    def format(self):
        return get_format(self.weight_dtype)

    @property
    def sym(self) -> bool:
        return self.scheme == "sym"

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]

    def skips(self, module_name: str) -> bool:
        return any(pat in module_name for pat in self.modules_to_not_convert)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a quantization_config must be a JSON object, not {type(data).__name__}")
        data = {k: v for k, v in data.items() if k not in ("quant_method", "layers", "checksums", "input_embedding")}
        data = read_saved_version(data)
        return cls(**data)

    @classmethod
    def coerce(cls, config=None, *, load_in_4bit: bool = False, load_in_8bit: bool = False) -> "QuantConfig | None":
        """What users pass as a quantization config -> a QuantConfig, or None when they passed none.

        Accepts a QuantConfig (or WeightOnlyQuantConfig), its dict form (``quantization_config``
        of a saved model), transformers' ``BitsAndBytesConfig`` / ``GPTQConfig`` / ``AwqConfig`` and
        Intel's ``WeightOnlyQuantConfig`` keywords, as objects or dicts (``config_compat``: each
        field mapped with its meaning or refused by name), or the ``load_in_4bit`` / ``load_in_8bit``
        shortcuts.
        """
        if load_in_4bit and load_in_8bit:
            raise ConfigError("pass at most one of load_in_4bit and load_in_8bit")
        if config is not None and (load_in_4bit or load_in_8bit):
            raise ConfigError("pass either quantization_config or a load_in_*bit shortcut, not both")
        if load_in_4bit or load_in_8bit:
            return cls(weight_dtype="int4" if load_in_4bit else "int8")
        if config is None or isinstance(config, QuantConfig):
            return config
        fields = peer_fields(config)
        if fields is not None:
            return cls(**fields)
        if isinstance(config, dict):
            return cls.from_dict(config)
        raise TypeError(f"quantization config must be a QuantConfig/WeightOnlyQuantConfig, transformers' "
                        f"BitsAndBytesConfig/GPTQConfig/AwqConfig, a dict or None, not {type(config).__name__}")


def _problems(exc: ValidationError) -> str:
    return "; ".join(_problem(e) for e in exc.errors())


# Fields a config may leave to be decided where quantization runs, and the value that says so; a saved config
# holds what they were decided to be.
DECIDED_AT_RUN = {"scale_tuning_steps": None, "calibration_dtype": "auto", "awq_parent_batches": None,
                  "awq_mlp_token_stride": None, "awq_scale_ridge": None}


def _bits(weight_dtype) -> int:
    """Bits of a weight_dtype name as given (the default's when None); 0 for a name no format has (the
    field's own validation reports it)."""
    try:
        return get_format(QuantConfig.model_fields["weight_dtype"].default if weight_dtype is None else weight_dtype).bits
    except (ValueError, KeyError, TypeError, AttributeError):
        return 0


def _owners(setting: str) -> list[str]:
    return [algorithm for algorithm, names in ALGORITHM_SETTINGS.items() if setting in names]


def _problem(error: dict) -> str:
    """One pydantic error as ``field: message`` (our validators' messages without pydantic's prefix)."""
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class WeightOnlyQuantConfig(QuantConfig):
    """Intel's ``WeightOnlyQuantConfig``: its keywords (``llm_int8_skip_modules``, ``mse_range``,
    ``use_double_quant``, ``calib_dataset``, ``calib_iters``, ``compute_dtype=torch.bfloat16``, ...) with
    Intel's defaults for what is left out: nf4, groups of 32, sym, RTN, fp32 compute and scales, the
    output layers float (``config_compat.INTEL_DEFAULTS``; ``QuantConfig`` keeps quantllm's: int4, groups
    of 128). A QuantConfig in every other way: it saves the values it ran with, and reloads as a
    QuantConfig equal to it.
    """

    def __init__(self, **kwargs):
        super().__init__(**intel_fields(kwargs))

__all__ = ["QuantConfig", "WeightOnlyQuantConfig", "ALIASES"]

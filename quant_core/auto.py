"""``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM`` as Intel's extension offered them, and the
cached load-then-quantize step that the LangChain and LlamaIndex providers share: they reach a
model only through ``engine_for_source`` / ``engine_for_model`` (one engine per model).

    from quant_core.auto import AutoModelForSeq2SeqLM
    model = AutoModelForSeq2SeqLM.from_pretrained(model_id, quantization_config=WeightOnlyQuantConfig(weight_dtype="nf4"))

returns an ordinary transformers model whose linear layers are ``QuantLinear``. Loading and
quantizing the same source with the same config twice in one process returns the first result.
A directory saved by quantllm loads packed, without quantizing again; asking for a different
config than the one it (or any already quantized model) carries is an error that says what to do.
"""
from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

from huggingface_hub import model_info, try_to_load_from_cache

from .calibration import check_calibration_source
from .config import QuantConfig
from .dtypes import as_torch_dtype
from .engine import GenerationEngine
from .errors import ConfigError, SourceNotFoundError
from .load_options import as_device, loading_options
from .loading import TASKS, load_model
from .modules import QuantLinear
from .quantize import quantize

_CACHE: dict[tuple, tuple] = {}  # (source, task, config, dtype, device, model_kwargs) -> (model, tokenizer)
_CACHE_LOCK = threading.Lock()


def as_quant_config(config=None, *, load_in_4bit: bool = False, load_in_8bit: bool = False) -> QuantConfig | None:
    """None | QuantConfig (or WeightOnlyQuantConfig) | transformers' BitsAndBytesConfig/GPTQConfig/AwqConfig | dict,
    or a ``load_in_*bit`` shortcut -> QuantConfig | None (see ``QuantConfig.coerce``)."""
    return QuantConfig.coerce(config, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)


# transformers pipeline tasks that run an encoder-decoder model as text2text-generation, with the
# model's own input prefix for the task (config.task_specific_params, e.g. T5's "summarize: ")
TRANSLATION = re.compile(r"translation(_[a-z]{2,3}_to_[a-z]{2,3})?")


def check_task(task: str) -> str:
    if task not in TASKS and task != "summarization" and not TRANSLATION.fullmatch(str(task)):
        raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}, summarization, "
                          f"translation or translation_XX_to_YY (e.g. translation_en_to_de)")
    return task


def model_task(task: str) -> str:
    """The task whose model class loads the model: summarization and translation run seq2seq models."""
    return task if check_task(task) in TASKS else "text2text-generation"


def task_prefix(model, task: str) -> str:
    """What transformers' summarization / translation pipelines put before the input, from the model's
    config (``task_specific_params[task]["prefix"]``, else ``config.prefix``); "" for other tasks."""
    if model_task(task) == task:
        return ""
    config = model.config
    params = (getattr(config, "task_specific_params", None) or {}).get(task) or {}
    return params.get("prefix") or getattr(config, "prefix", None) or ""


def check_source(model_id, model_kwargs: dict | None = None) -> str | None:
    """Fail fast (before any loading) when ``model_id`` is neither a local path nor a reachable hub id."""
    if model_id is None:
        return None
    if not isinstance(model_id, (str, os.PathLike)):
        raise TypeError(f"model_id must be a path or a hub id string, not {type(model_id).__name__}")
    source = os.fspath(model_id)
    if Path(source).exists():
        return str(Path(source).resolve())
    if source.endswith(".gguf") or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise SourceNotFoundError(f"model path {source!r} does not exist")
    where = {k: v for k, v in (model_kwargs or {}).items() if k in ("revision", "token")}
    if isinstance(try_to_load_from_cache(source, "config.json", revision=where.get("revision")), str):
        return source
    if (model_kwargs or {}).get("local_files_only"):
        raise SourceNotFoundError(f"model {source!r} is not a local path and not in the Hugging Face cache "
                                  f"(model_kwargs local_files_only=True)")
    try:
        model_info(source, timeout=10, **where)  # the user named a hub model: the one network call
    except Exception as exc:  # offline, unknown id, gated: all mean "cannot load this"
        raise SourceNotFoundError(
            f"model {source!r} is neither a local path nor reachable on the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc)[:200]}); download it and pass its folder, a .gguf file, "
            f"or model_id=None for the embedded SmolLM2-135M-Instruct") from exc
    return source


def load_for_generation(model_id=None, *, task: str = "text-generation", quantization_config=None,
                        dtype=None, device="cpu", trust_remote_code: bool = False, progress: bool = True,
                        model_kwargs: dict | None = None):
    """``(model, tokenizer)`` ready to generate: loaded, quantized when a config is given, cached.
    ``model_kwargs`` go to transformers' ``from_pretrained`` as they are (see ``quant_core.load_options``)."""
    task = model_task(task)
    config = as_quant_config(quantization_config)
    if config is not None:  # a calibration file that cannot be read fails before the model loads
        check_calibration_source(config.calibration_dataset)
    dtype, device = as_torch_dtype(dtype), as_device(device)
    model_kwargs = dict(model_kwargs or {})
    source = check_source(model_id, model_kwargs)
    key = (source, task, json.dumps(config.to_dict(), sort_keys=True) if config else None, str(dtype), device,
           json.dumps(model_kwargs, sort_keys=True, default=repr))
    with _CACHE_LOCK:  # held while loading so two threads never quantize the same model twice
        if key not in _CACHE:
            model, tokenizer = load_model(source, task=task, dtype=dtype, device=device,
                                          trust_remote_code=trust_remote_code, model_kwargs=model_kwargs)
            if config is not None:
                model = quantize_once(model, config, progress=progress)
            _CACHE[key] = (model, tokenizer)
        return _CACHE[key]


def engine_for_source(model_id=None, *, task: str = "text-generation", quantization_config=None, dtype=None,
                      device="cpu", trust_remote_code: bool = False, max_batch_size: int = 8,
                      model_kwargs: dict | None = None, n_threads: int | None = None) -> GenerationEngine:
    """The one engine of the (cached) model that ``load_for_generation`` gives for these arguments
    (``n_threads``: CPU threads of its forward passes when given, GenerationEngine.for_model's)."""
    model, tokenizer = load_for_generation(model_id, task=task, quantization_config=quantization_config,
                                           dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                           model_kwargs=model_kwargs)
    return GenerationEngine.for_model(model, tokenizer, max_batch_size=max_batch_size, n_threads=n_threads)


def engine_for_model(model, tokenizer, quantization_config=None, *, max_batch_size: int = 8,
                     n_threads: int | None = None) -> GenerationEngine:
    """The one engine of a loaded model, quantized in place first (once) when a config is given."""
    config = as_quant_config(quantization_config)
    if config is not None:
        model = quantize_once(model, config)
    return GenerationEngine.for_model(model, tokenizer, max_batch_size=max_batch_size, n_threads=n_threads)


def quantize_once(model, config: QuantConfig, progress: bool = True):
    """Quantize ``model`` in place, unless it already is: then ``config`` must be the one it carries
    (a different one raises rather than being silently ignored)."""
    if not any(isinstance(m, QuantLinear) for m in model.modules()):
        return quantize(model, config, progress=progress)  # keeps transformers' fp32-only layers float
    have = _carried_config(model)
    if have is None:
        raise ConfigError("model is already quantized but records no quantization_config to compare with "
                          "the requested one; pass quantization_config=None to use it as it is")
    config = config.as_ran(have)  # "auto" fields match whatever the run decided
    if have != config:
        theirs, ours = have.to_dict(), config.to_dict()
        differ = ", ".join(f"{k}={theirs[k]!r} (asked: {ours[k]!r})" for k in ours if theirs.get(k) != ours[k])
        raise ConfigError(f"model is already quantized with a different config: {differ}; pass "
                          f"quantization_config=None to use it as it is, or load the float model to quantize "
                          f"it with this config")
    return model


def _carried_config(model) -> QuantConfig | None:
    saved = getattr(getattr(model, "config", None), "quantization_config", None)
    return QuantConfig.from_dict(dict(saved)) if saved else None


class _QuantAutoModel:
    task = "text-generation"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, *, quantization_config=None,
                        load_in_4bit: bool = False, load_in_8bit: bool = False, device_map=None, device=None,
                        **model_kwargs):
        """Load ``pretrained_model_name_or_path`` (a folder, a .gguf file, a quantllm-saved folder, a hub id
        or None for the embedded SmolLM2) and quantize it with ``quantization_config``. Every other keyword
        is transformers' ``from_pretrained``'s and goes to it (``dtype``, ``revision``, ``attn_implementation``,
        ...); one that quantllm's loader of that source cannot use is refused by name."""
        config = as_quant_config(quantization_config, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
        options = loading_options(model_kwargs, device_map=device_map)
        model, _ = load_for_generation(pretrained_model_name_or_path, task=cls.task, quantization_config=config,
                                       dtype=options["dtype"], device=as_device(device, options["device_map"]),
                                       trust_remote_code=options["trust_remote_code"],
                                       model_kwargs=options["model_kwargs"])
        return model


class AutoModelForCausalLM(_QuantAutoModel):
    """Decoder-only model, quantized on load (Intel extension's ``AutoModelForCausalLM``)."""
    task = "text-generation"


class AutoModelForSeq2SeqLM(_QuantAutoModel):
    """Encoder-decoder model (T5, BART), quantized on load (Intel extension's ``AutoModelForSeq2SeqLM``)."""
    task = "text2text-generation"

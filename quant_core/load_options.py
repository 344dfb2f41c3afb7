"""What users pass to load a model, as transformers spells it, turned into what quantllm's loader
takes: ``device`` / ``device_map`` -> one torch device string, and ``model_kwargs`` -> the dtype,
``trust_remote_code``, a device map, and the remaining ``from_pretrained`` keywords, passed through.

quantllm runs a model on one device, so a ``device_map`` is honoured when it names one device
(``"auto"``, ``"cpu"``, ``"cuda:1"``, ``{"": 0}``, or a dict whose modules all sit on one device)
and refused, by name, when it spreads a model over several. Nothing is dropped silently.
"""
from __future__ import annotations

from typing import Any

import torch

from .dtypes import as_torch_dtype
from .errors import ConfigError

# transformers' placement strategies: with one device to place on they all mean "the accelerator if any".
PLACEMENT_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# from_pretrained keywords that say where the files are; the tokenizer is read from the same place.
LOCATION_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder", "force_download", "proxies")
# model_kwargs that have another home in quantllm, and where to put them instead.
REHOMED_KWARGS = {
    "quantization_config": "pass quantization_config= (a QuantConfig, WeightOnlyQuantConfig or dict) to the "
                           "wrapper or to quant_core.auto's from_pretrained, not inside model_kwargs",
    "load_in_4bit": "pass load_in_4bit=True to from_model_id / from_pretrained (quantllm's int4), not in model_kwargs",
    "load_in_8bit": "pass load_in_8bit=True to from_model_id / from_pretrained (quantllm's int8), not in model_kwargs",
    "max_memory": "quantllm places a model on one device, so there is no memory budget per device to split by",
    "offload_folder": "quantllm does not offload weights to disk; the whole (packed) model sits on one device",
}


def as_device(device=None, device_map=None) -> str:
    """transformers-pipeline style ``device`` (-1, "cpu", "cuda", 0, "cuda:1") and/or transformers'
    ``device_map`` -> a torch device string. ``device`` wins where both are given and agree; they must."""
    mapped = None if device_map is None else _device_of_map(device_map)
    if device is None or device == -1:
        return mapped or "cpu"
    if isinstance(device, torch.device):
        device = str(device)
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        device = f"cuda:{device}"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available; use device='cpu' (or -1)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"unknown device {device!r}; use -1 or 'cpu', 'cuda', or a GPU index such as 0")
    if mapped is not None and _normal(mapped) != _normal(device):
        raise ConfigError(f"device={device!r} and device_map={device_map!r} name different devices; pass one of them")
    return device


def _device_of_map(device_map) -> str:
    if isinstance(device_map, dict):
        places = {_placement(v) for v in device_map.values()}
        if len(places) != 1:
            raise ConfigError(
                f"device_map spreads the model over {sorted(places)}; quantllm runs a model on one device. Pass "
                f"one device (device_map='auto', 'cpu', 'cuda:0' or {{'': 0}}); to serve one model from several "
                f"GPUs, export it (quantllm export --to gptq) and use vLLM's tensor parallelism (docs/serving.md)")
        device_map = places.pop()
    if isinstance(device_map, str) and device_map in PLACEMENT_STRATEGIES:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return as_device(_placement(device_map))


def _placement(value) -> str:
    """One value of a device map (an index, "cpu", "cuda:1", a torch.device) -> a device string."""
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"cuda:{value}"
    if isinstance(value, str) and value in ("disk", "meta"):
        raise ConfigError(f"device_map places modules on {value!r}; quantllm keeps the whole model on one "
                          f"device (cpu or a GPU)")
    if not isinstance(value, str):
        raise ConfigError(f"device_map values are devices (0, 'cpu', 'cuda:1'); got {value!r}")
    return value


def _normal(device: str) -> str:
    return "cuda:0" if device == "cuda" else device


def loading_options(model_kwargs: dict | None, *, device_map=None) -> dict[str, Any]:
    """``model_kwargs`` (transformers' ``from_pretrained`` keywords) -> ``dtype``, ``trust_remote_code``,
    ``device_map`` and ``model_kwargs`` (the rest, passed through to ``from_pretrained``). Keywords that
    quantllm takes elsewhere are refused with where they go; a ``device_map`` both here and as an
    argument is refused, as langchain-huggingface does."""
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise ConfigError(f"model_kwargs must be a dict of from_pretrained keywords; got {type(model_kwargs).__name__}")
    options = dict(model_kwargs or {})
    for key, where in REHOMED_KWARGS.items():
        if key in options:
            raise ConfigError(f"model_kwargs[{key!r}] is not used: {where}")
    if "dtype" in options and "torch_dtype" in options:
        raise ConfigError("model_kwargs has both dtype and torch_dtype (the same setting); keep dtype")
    dtype = options.pop("dtype", options.pop("torch_dtype", None))
    if options.pop("use_safetensors", True) is not True:  # True asks for what the loader always does
        raise ConfigError("model_kwargs use_safetensors=False is refused: quantllm loads safetensors weights only "
                          "(unpickling a .bin file can run code); convert the weights to safetensors first")
    trust = options.pop("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise ConfigError(f"trust_remote_code must be True or False; got {trust!r}")
    if "device_map" in options:
        if device_map is not None:
            raise ConfigError("device_map is given both as an argument and in model_kwargs; keep one")
        device_map = options.pop("device_map")
    if device_map is not None:
        _device_of_map(device_map)  # a map over several devices fails here, before any loading
    return {"dtype": as_torch_dtype(dtype), "trust_remote_code": trust, "device_map": device_map,
            "model_kwargs": options}

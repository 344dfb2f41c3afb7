"""HuggingFaceLLM's loading arguments, with their meaning, turned into the model's one engine.

``model_name`` (what to load when no model is passed), ``device_map``, ``model_kwargs`` (to
transformers' ``from_pretrained``), ``tokenizer_name`` and ``tokenizer_kwargs`` (the tokenizer is
loaded with them) are honoured; where one cannot apply (loading options for a model object that is
already loaded) it is refused by name.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoTokenizer

from quant_core.auto import engine_for_model, engine_for_source
from quant_core.engine import GenerationEngine
from quant_core.engine_rows import device_of
from quant_core.errors import ConfigError
from quant_core.load_options import as_device, loading_options


@dataclass
class LoadRequest:
    """What a QuantLlamaLLM was asked to load, in HuggingFaceLLM's terms plus quantllm's own."""
    model: Any = None  # None, a source (hub id, directory, .gguf file) or a loaded transformers model
    tokenizer: Any = None
    quant_config: Any = None
    device: Any = None
    device_map: Any = None
    model_kwargs: dict = field(default_factory=dict)
    tokenizer_name: str | None = None
    tokenizer_kwargs: dict = field(default_factory=dict)
    trust_remote_code: bool = False
    max_batch_size: int = 16
    n_threads: int | None = None

    @property
    def is_source(self) -> bool:
        return self.model is None or isinstance(self.model, (str, os.PathLike))


def build_engine(request: LoadRequest) -> GenerationEngine:
    """A source goes through the core's cached load-then-quantize step (shared with the LangChain
    provider: one copy of a model per source and config in a process); a model object is quantized
    in place once (when a config is given). Either way the model's one engine comes back, with the
    tokenizer reloaded first when ``tokenizer_name`` / ``tokenizer_kwargs`` ask for it."""
    if not request.is_source:
        return _engine_of_object(request)
    engine = _engine_of_source(request)
    if request.tokenizer_name is None and not request.tokenizer_kwargs:
        return engine
    tokenizer = load_tokenizer(engine.tokenizer, request.tokenizer_name, request.tokenizer_kwargs,
                               request.trust_remote_code)
    return engine_for_model(engine.model, tokenizer, max_batch_size=request.max_batch_size,
                            n_threads=request.n_threads)


def _engine_of_source(request: LoadRequest) -> GenerationEngine:
    if request.tokenizer is not None:
        raise ConfigError("tokenizer= is only for a model object; a model source brings its own tokenizer "
                          "(or name another with tokenizer_name=)")
    options = loading_options(request.model_kwargs, device_map=request.device_map)
    trust = request.trust_remote_code or options["trust_remote_code"]
    return engine_for_source(request.model, quantization_config=request.quant_config,
                             device=as_device(request.device, options["device_map"]), dtype=options["dtype"],
                             trust_remote_code=trust, max_batch_size=request.max_batch_size,
                             model_kwargs=options["model_kwargs"], n_threads=request.n_threads)


def _engine_of_object(request: LoadRequest) -> GenerationEngine:
    model = request.model
    if not hasattr(model, "config") or not callable(model):
        raise TypeError(f"model must be a source (None, a hub id, a path) or a loaded transformers model, "
                        f"not {type(model).__name__}")
    given = [name for name, value in (("model_kwargs", request.model_kwargs), ("device_map", request.device_map))
             if value]
    if request.device is not None and not _same_device(as_device(request.device), device_of(model)):
        given.append(f"device={request.device!r} (the model is on {device_of(model)})")
    if given:
        raise ConfigError(f"{', '.join(given)} apply when QuantLlamaLLM loads the model; this model is already "
                          f"loaded: move it yourself (model.to('cuda')) or pass its source instead")
    tokenizer = request.tokenizer
    if tokenizer is None and request.tokenizer_name is None:
        raise ConfigError("a model object needs its tokenizer: QuantLlamaLLM.from_model(model, tokenizer), "
                          "or tokenizer_name=")
    if request.tokenizer_name is not None or request.tokenizer_kwargs:
        tokenizer = load_tokenizer(tokenizer, request.tokenizer_name, request.tokenizer_kwargs,
                                   request.trust_remote_code)
    return engine_for_model(model, tokenizer, request.quant_config, max_batch_size=request.max_batch_size,
                            n_threads=request.n_threads)


def _same_device(name: str, device) -> bool:
    return name == str(device) or (name == "cuda" and device.type == "cuda" and device.index in (0, None))


def load_tokenizer(current, name: str | None, kwargs: dict, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained(name, **kwargs)``, as HuggingFaceLLM loads its tokenizer; with no
    name, the model's own tokenizer read again with ``kwargs`` (through a temporary copy of its files, so
    it works for every source, the embedded GGUF model included)."""
    if not isinstance(kwargs, dict):
        raise ConfigError(f"tokenizer_kwargs must be a dict of AutoTokenizer.from_pretrained keywords; "
                          f"got {type(kwargs).__name__}")
    if name is not None:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)
    with tempfile.TemporaryDirectory(prefix="quantllm-tokenizer-") as tmp:
        current.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp, trust_remote_code=trust_remote_code, **kwargs)

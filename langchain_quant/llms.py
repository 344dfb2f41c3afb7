"""QuantLLM: a LangChain LLM over a weight-only quantized model, drop-in for Intel's
``WeightOnlyQuantPipeline`` (kept as an alias), with real batching through quant_core's engine."""
from __future__ import annotations

from typing import Any, Iterator

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from quant_core.auto import TASKS, as_device, as_quant_config, check_task, engine_for_model, engine_for_source
from quant_core.dtypes import as_torch_dtype
from quant_core.engine import GenerationOutput, GenerationParams
from quant_core.errors import ConfigError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class QuantLLM(BaseLLM):
    """A weight-only quantized Hugging Face model as a LangChain LLM.

    Build it with ``QuantLLM.from_model_id(model_id, task, quantization_config=...)`` or wrap an
    existing transformers pipeline with ``QuantLLM(pipeline=pipe, quantization_config=...)``.
    ``batch`` runs prompts ``batch_size`` at a time through one forward pass per decoding step.
    """
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    pipeline: Any = None
    """A transformers ``text-generation`` pipeline whose model and tokenizer are used (optional)."""
    model_id: str | None = None
    """Local folder, ``.gguf`` file, quantllm-saved folder or hub id; None: the embedded SmolLM2-135M-Instruct."""
    task: str = "text-generation"
    """``text-generation`` (decoder-only) or ``text2text-generation`` (encoder-decoder, e.g. T5)."""
    quantization_config: Any = None
    """QuantConfig / WeightOnlyQuantConfig / dict / None (float model). A quantllm-saved folder or an already
    quantized pipeline model takes None or the config it carries (another one is an error)."""
    model_kwargs: dict | None = None
    """Loading options: ``dtype``/``torch_dtype``, ``trust_remote_code`` (off by default)."""
    pipeline_kwargs: dict | None = None
    """Default generation settings: max_new_tokens, temperature, top_p, top_k, repetition_penalty, do_sample, seed."""
    batch_size: int = 4
    """Prompts decoded together in one batch by ``batch``/``generate``."""
    device: Any = -1
    """-1 or "cpu", "cuda", or a GPU index."""
    engine: Any = Field(default=None, exclude=True)
    """A ``quant_core.engine.GenerationEngine`` to use directly (built from the model otherwise)."""

    _engine: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> "QuantLLM":
        check_task(self.task)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer; got {self.batch_size!r}")
        loading_options(self.model_kwargs)
        config = as_quant_config(self.quantization_config)
        self.quantization_config = config.to_dict() if config is not None else None
        GenerationParams.from_kwargs(self.pipeline_kwargs)  # bad settings fail here, not at the first call
        if self.engine is not None:
            self._engine = self.engine
            if self.model_id is None:  # name the wrapped model, not the default one
                self.model_id = getattr(self.engine.model.config, "name_or_path", None) or "unnamed-model"
        elif self.pipeline is not None:
            self._engine = _engine_from_pipeline(self, config)
        return self

    @classmethod
    def from_model_id(cls, model_id: str | None = None, task: str = "text-generation", *,
                      quantization_config=None, model_kwargs: dict | None = None,
                      pipeline_kwargs: dict | None = None, device: Any = -1, device_map: Any = None,
                      batch_size: int = 4, load_in_4bit: bool = False, load_in_8bit: bool = False,
                      **kwargs: Any) -> "QuantLLM":
        """Load ``model_id``, quantize it (cached per model and config within the process), wrap it.

        Every argument is checked before the model is loaded.
        """
        config = as_quant_config(quantization_config, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
        device = as_device(device, device_map)
        llm = cls(model_id=None if model_id is None else str(model_id), task=task,
                  quantization_config=config.to_dict() if config else None, model_kwargs=model_kwargs,
                  pipeline_kwargs=pipeline_kwargs, device=device, batch_size=batch_size, **kwargs)
        llm.get_engine()
        return llm

    # ---- the engine ------------------------------------------------------------------
    def get_engine(self):
        """The generation engine, loading (and quantizing) the model on first use."""
        if self._engine is None:
            self._engine = engine_for_source(self.model_id, task=self.task, device=self.device,
                                             quantization_config=self.quantization_config,
                                             max_batch_size=self.batch_size, **loading_options(self.model_kwargs))
        return self._engine

    # ---- LangChain's LLM interface -----------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "quantllm_pipeline"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_id": self.model_id or DEFAULT_MODEL_NAME, "task": self.task,
                "quantization_config": self.quantization_config, "model_kwargs": self.model_kwargs,
                "pipeline_kwargs": self.pipeline_kwargs, "batch_size": self.batch_size}

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        params = GenerationParams.from_kwargs(self.pipeline_kwargs, _call_settings(kwargs), stop=stop)
        if not prompts:
            raise ConfigError("no prompts were given: pass at least one prompt")
        engine = self.get_engine()
        outputs = []
        for start in range(0, len(prompts), self.batch_size):
            outputs.extend(engine.generate(list(prompts[start:start + self.batch_size]), params))
        generations = [[Generation(text=o.text, generation_info=_info(o))] for o in outputs]
        llm_output = {"token_usage": GenerationOutput.total_usage(outputs),
                      "model_name": self.model_id or DEFAULT_MODEL_NAME}
        return LLMResult(generations=generations, llm_output=llm_output)

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        params = GenerationParams.from_kwargs(self.pipeline_kwargs, _call_settings(kwargs), stop=stop)
        for delta, final in self.get_engine().stream_with_output(prompt, params):
            chunk = GenerationChunk(text=delta, generation_info=_info(final) if final else None)
            if run_manager and delta:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk


def loading_options(model_kwargs: dict | None) -> dict[str, Any]:
    """``model_kwargs`` -> the loading keywords of ``quant_core.auto`` (checked, so a typo fails early)."""
    options = dict(model_kwargs or {})
    dtype = options.pop("dtype", options.pop("torch_dtype", None))
    trust = bool(options.pop("trust_remote_code", False))
    if options:
        raise ConfigError(f"unsupported model_kwargs {sorted(options)}; supported: dtype, torch_dtype, "
                          f"trust_remote_code")
    return {"dtype": as_torch_dtype(dtype), "trust_remote_code": trust}


def _call_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Per-call settings: keyword arguments of invoke/bind, or a ``pipeline_kwargs`` dict among them."""
    settings = dict(kwargs)
    settings.update(settings.pop("pipeline_kwargs", None) or {})
    return settings


def _info(output: GenerationOutput) -> dict[str, Any]:
    return {"finish_reason": output.finish_reason, **output.usage()}


def _engine_from_pipeline(llm: QuantLLM, config):
    """Use a transformers pipeline's model and tokenizer (quantizing the model once if a config is given)."""
    pipe = llm.pipeline
    if not (hasattr(pipe, "model") and hasattr(pipe, "tokenizer")):
        raise TypeError(f"pipeline must be a transformers pipeline (with .model and .tokenizer), "
                        f"not {type(pipe).__name__}")
    task = getattr(pipe, "task", llm.task)
    if task not in TASKS:
        raise ConfigError(f"pipeline task {task!r} is not supported; use a text-generation pipeline")
    llm.task = task
    # settings given when the pipeline was built (pipeline(..., max_new_tokens=10)) become defaults
    built = getattr(pipe, "_generate_kwargs", None) or getattr(pipe, "_forward_params", None) or {}
    known = {k: v for k, v in built.items() if k in ("max_new_tokens", "temperature", "top_p", "top_k",
                                                     "repetition_penalty", "do_sample")}
    llm.pipeline_kwargs = {**known, **(llm.pipeline_kwargs or {})}
    engine = engine_for_model(pipe.model, pipe.tokenizer, config, max_batch_size=llm.batch_size)
    if llm.model_id is None:  # name the wrapped model, not the default one
        llm.model_id = getattr(engine.model.config, "name_or_path", None) or "unnamed-model"
    return engine


# Intel Extension for Transformers' name for the same class.
WeightOnlyQuantPipeline = QuantLLM

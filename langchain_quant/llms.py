"""QuantLLM: a LangChain LLM over a weight-only quantized model, drop-in for Intel's
``WeightOnlyQuantPipeline`` (kept as an alias), with real batching through quant_core's engine."""
from __future__ import annotations

from typing import Any, Iterator

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from quant_core.auto import as_quant_config, check_task, engine_for_model, engine_for_source, task_prefix
from quant_core.constrained import Constraint
from quant_core.cpu_threads import check_threads
from quant_core.engine import GenerationOutput, GenerationParams
from quant_core.errors import ConfigError
from quant_core.load_options import as_device, loading_options

from .pipeline_outputs import generate_sequences, shown_text, split_output_settings

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# langchain-huggingface's backends: "ipex" means the default there too (PyTorch runs Intel's kernels
# itself); quantllm picks IPEX kernels where installed, with no flag. OpenVINO runs its own model format.
BACKENDS = ("default", "ipex")


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
    """``text-generation`` (decoder-only), ``text2text-generation``, ``summarization`` or ``translation_XX_to_YY``
    (encoder-decoder, e.g. T5; the last two put the model's own task prefix before each prompt, as transformers'
    pipelines do)."""
    quantization_config: Any = None
    """QuantConfig / WeightOnlyQuantConfig / dict / None (float model). A quantllm-saved folder or an already
    quantized pipeline model takes None or the config it carries (another one is an error)."""
    model_kwargs: dict | None = None
    """transformers ``from_pretrained`` keywords, passed through (``dtype``, ``revision``, ``attn_implementation``,
    ...; ``trust_remote_code`` is off by default); a ``device_map`` here works as the field."""
    pipeline_kwargs: dict | None = None
    """Default generation settings: max_new_tokens, temperature, top_p, top_k, repetition_penalty, do_sample, seed,
    eos_token_id; and the result's shape: num_return_sequences (with sampling), return_full_text."""
    batch_size: int = 16
    """Prompts decoded together in one batch by ``batch``/``generate``. 16, not langchain-huggingface's 4: on a
    2-core CPU SmolLM2 int4 decodes 16 prompts at 1.7x the throughput of 4 (issue 15), and its KV cache is small."""
    n_threads: int | None = None
    """CPU threads of each forward pass (as ``LlamaCpp``'s); None: the physical cores. One setting per model:
    wrappers sharing a model share its engine, and the last one given applies."""
    device: Any = -1
    """-1 or "cpu", "cuda", or a GPU index."""
    device_map: Any = None
    """transformers' device_map: "auto" (a GPU if any), "cpu", "cuda:1", or a dict placing every module on one device."""
    streaming: bool = False
    """Generate through the stream even in ``invoke``/``generate``, so callbacks see every token
    (``on_llm_new_token``); prompts then run one at a time."""
    engine: Any = Field(default=None, exclude=True)
    """A ``quant_core.engine.GenerationEngine`` to use directly (built from the model otherwise)."""
    grammar: str | None = None
    """A grammar every completion must follow: GBNF (llama.cpp's, as ``LlamaCpp(grammar=...)``) or Lark
    (llguidance's); needs the ``structured`` extra. Also per call: ``invoke(prompt, grammar=...)``."""
    json_schema: dict | str | None = None
    """A JSON schema every completion must follow (dict or JSON text); also per call (``json_schema=``)."""

    _engine: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> "QuantLLM":
        check_task(self.task)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer; got {self.batch_size!r}")
        check_threads(self.n_threads)
        options = loading_options(self.model_kwargs, device_map=self.device_map)
        self.device = as_device(self.device, options["device_map"])
        config = as_quant_config(self.quantization_config)
        self.quantization_config = config.to_dict() if config is not None else None
        shape, (settings,) = split_output_settings(self.pipeline_kwargs)  # bad settings fail here, not at the first call
        shape.check(GenerationParams.from_kwargs(settings), self.task)
        given = [name for name in ("model_kwargs", "device_map") if getattr(self, name)]
        if given and (self.engine is not None or self.pipeline is not None):
            raise ConfigError(f"{' and '.join(given)} apply when QuantLLM loads the model (from_model_id); this one "
                              f"wraps a model already loaded (engine= or pipeline=): load it with them instead")
        _constraint(self, {})  # as does a grammar or schema that cannot compile
        if self.engine is not None:
            self._engine = self.engine
            self._engine.n_threads = self.n_threads or self._engine.n_threads
            if self.model_id is None:  # name the wrapped model, not the default one
                self.model_id = getattr(self.engine.model.config, "name_or_path", None) or "unnamed-model"
        elif self.pipeline is not None:
            self._engine = _engine_from_pipeline(self, config)
        return self

    @classmethod
    def from_model_id(cls, model_id: str | None = None, task: str = "text-generation", *,
                      quantization_config=None, model_kwargs: dict | None = None,
                      pipeline_kwargs: dict | None = None, device: Any = -1, device_map: Any = None,
                      batch_size: int = 16, load_in_4bit: bool = False, load_in_8bit: bool = False,
                      backend: str = "default", **kwargs: Any) -> "QuantLLM":
        """Load ``model_id``, quantize it (cached per model and config within the process), wrap it.
        The arguments of langchain-huggingface's ``HuggingFacePipeline.from_model_id`` mean what they mean
        there. Every argument is checked before the model is loaded.
        """
        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend!r} is not available: quantllm runs its own kernels (chosen per CPU "
                              f"or GPU); use backend='default'")
        config = as_quant_config(quantization_config, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
        # checked here too, so the error is ours (ConfigError) rather than pydantic's wrapper of it
        check_task(task)
        as_device(device, loading_options(model_kwargs, device_map=device_map)["device_map"])
        llm = cls(model_id=None if model_id is None else str(model_id), task=task,
                  quantization_config=config.to_dict() if config else None, model_kwargs=model_kwargs,
                  pipeline_kwargs=pipeline_kwargs, device=device, device_map=device_map, batch_size=batch_size,
                  **kwargs)
        llm.get_engine()
        return llm

    # ---- the engine ------------------------------------------------------------------
    def get_engine(self):
        """The generation engine, loading (and quantizing) the model on first use."""
        if self._engine is None:
            options = loading_options(self.model_kwargs, device_map=self.device_map)
            self._engine = engine_for_source(self.model_id, task=self.task, device=self.device,
                                             quantization_config=self.quantization_config,
                                             max_batch_size=self.batch_size, n_threads=self.n_threads,
                                             dtype=options["dtype"],
                                             trust_remote_code=options["trust_remote_code"],
                                             model_kwargs=options["model_kwargs"])
        return self._engine

    # ---- token counting with the model's own tokenizer (LangChain's default fetches GPT-2's) ----
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the model's tokenizer (``custom_get_token_ids`` when set, as LangChain does)."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        return list(self.get_engine().tokenizer(text, add_special_tokens=False)["input_ids"])

    # ---- LangChain's LLM interface -----------------------------------------------------
    def batch(self, inputs: list, config: RunnableConfig | list[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list:
        """LangChain's batch, except that under ``return_exceptions=True`` a prompt's error is that
        prompt's result. BaseLLM runs every prompt in one call, so one prompt too long for the context
        window failed them all: when that call fails, each prompt runs as its own call instead (the
        engine batches concurrent calls together again)."""
        if not return_exceptions or len(inputs) < 2:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        try:
            return super().batch(inputs, config, **kwargs)
        except Exception:  # noqa: BLE001 - whichever prompt it was, it gets its own error below
            return Runnable.batch(self, inputs, config, return_exceptions=True, **kwargs)

    async def abatch(self, inputs: list, config: RunnableConfig | list[RunnableConfig] | None = None, *,
                     return_exceptions: bool = False, **kwargs: Any) -> list:
        """``batch``'s per-prompt errors, for async callers."""
        if not return_exceptions or len(inputs) < 2:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        try:
            return await super().abatch(inputs, config, **kwargs)
        except Exception:  # noqa: BLE001
            return await Runnable.abatch(self, inputs, config, return_exceptions=True, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "quantllm_pipeline"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_id": self.model_id or DEFAULT_MODEL_NAME, "task": self.task,
                "quantization_config": self.quantization_config, "model_kwargs": self.model_kwargs,
                "pipeline_kwargs": self.pipeline_kwargs, "batch_size": self.batch_size, "n_threads": self.n_threads}

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        if not prompts:
            raise ConfigError("no prompts were given: pass at least one prompt")
        if self.streaming:
            return self._generate_by_streaming(prompts, stop, run_manager, **kwargs)
        constraint = _constraint(self, kwargs)
        shape, layers = split_output_settings(self.pipeline_kwargs, _call_settings(kwargs))
        params = GenerationParams.from_kwargs(*layers, stop=stop)
        shape.check(params, self.task)
        prefix = task_prefix(self.get_engine().model, self.task)
        per_prompt = generate_sequences(self.get_engine(), [prefix + p for p in prompts], params, shape,
                                        self.batch_size, constraint)
        generations = [[Generation(text=shown_text(p, o, shape), generation_info=_info(o)) for o in outs]
                       for p, outs in zip(prompts, per_prompt)]
        llm_output = {"token_usage": GenerationOutput.total_usage(o for outs in per_prompt for o in outs),
                      "model_name": self.model_id or DEFAULT_MODEL_NAME}
        return LLMResult(generations=generations, llm_output=llm_output)

    def _generate_by_streaming(self, prompts, stop, run_manager, **kwargs) -> LLMResult:
        generations, usage = [], []
        for prompt in prompts:
            chunks = list(self._stream(prompt, stop, run_manager, **kwargs))
            text = "".join(c.text for c in chunks)
            generations.append([Generation(text=text, generation_info=chunks[-1].generation_info)])
            usage.append(chunks[-1].generation_info)
        total = {k: sum(u[k] for u in usage) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        return LLMResult(generations=generations,
                         llm_output={"token_usage": total, "model_name": self.model_id or DEFAULT_MODEL_NAME})

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        constraint = _constraint(self, kwargs)
        shape, layers = split_output_settings(self.pipeline_kwargs, _call_settings(kwargs))
        params = GenerationParams.from_kwargs(*layers, stop=stop)
        shape.check(params, self.task, streaming=True)
        if shape.return_full_text:
            yield GenerationChunk(text=prompt)
        prompt = task_prefix(self.get_engine().model, self.task) + prompt
        for delta, final in self.get_engine().stream_with_output(prompt, params, constraint):
            chunk = GenerationChunk(text=delta, generation_info=_info(final) if final else None)
            if run_manager and delta:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk


def _call_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Per-call settings: keyword arguments of invoke/bind, or a ``pipeline_kwargs`` dict among them."""
    settings = dict(kwargs)
    settings.update(settings.pop("pipeline_kwargs", None) or {})
    return settings


def _constraint(llm: QuantLLM, kwargs: dict[str, Any]) -> Constraint | None:
    """The call's ``grammar=``/``json_schema=`` (popped from ``kwargs``), else the fields; checked now."""
    grammar, schema = kwargs.pop("grammar", llm.grammar), kwargs.pop("json_schema", llm.json_schema)
    if grammar is not None and schema is not None:
        raise ConfigError("give a grammar or a json_schema, not both")
    if grammar is not None:
        return Constraint.grammar(grammar).check()
    return None if schema is None else Constraint.json_schema(schema).check()


def _info(output: GenerationOutput) -> dict[str, Any]:
    return {"finish_reason": output.finish_reason, **output.usage()}


def _engine_from_pipeline(llm: QuantLLM, config):
    """Use a transformers pipeline's model and tokenizer (quantizing the model once if a config is given)."""
    pipe = llm.pipeline
    if not (hasattr(pipe, "model") and hasattr(pipe, "tokenizer")):
        raise TypeError(f"pipeline must be a transformers pipeline (with .model and .tokenizer), "
                        f"not {type(pipe).__name__}")
    task = getattr(pipe, "task", llm.task)
    try:
        check_task(task)
    except ConfigError as exc:
        raise ConfigError(f"pipeline task {task!r} is not supported; use a text-generation pipeline") from exc
    llm.task = task
    # settings given when the pipeline was built (pipeline(..., max_new_tokens=10)) become defaults
    built = getattr(pipe, "_generate_kwargs", None) or getattr(pipe, "_forward_params", None) or {}
    known = {k: v for k, v in built.items() if k in ("max_new_tokens", "temperature", "top_p", "top_k",
                                                     "repetition_penalty", "do_sample")}
    llm.pipeline_kwargs = {**known, **(llm.pipeline_kwargs or {})}
    engine = engine_for_model(pipe.model, pipe.tokenizer, config, max_batch_size=llm.batch_size,
                              n_threads=llm.n_threads)
    if llm.model_id is None:  # name the wrapped model, not the default one
        llm.model_id = getattr(engine.model.config, "name_or_path", None) or "unnamed-model"
    return engine


# Intel Extension for Transformers' name for the same class.
WeightOnlyQuantPipeline = QuantLLM

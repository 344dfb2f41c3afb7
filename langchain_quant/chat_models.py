"""ChatQuant: a LangChain chat model over a weight-only quantized model, through its chat template."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Iterator

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from quant_core.auto import as_quant_config
from quant_core.constrained import require_library
from quant_core.cpu_threads import check_threads
from quant_core.engine import GenerationEngine, GenerationOutput, GenerationParams
from quant_core.load_options import loading_options

from .chat_plan import CALL_KEYS, ChatPlan, ToolCallStream, has_tool_turns, plan_call
from .llms import DEFAULT_MODEL_NAME, QuantLLM
from .structured import structured_output
from .tools import BUILTIN, TEMPLATE, normalize_tool_choice, tool_call_constraint, tool_specs


class ChatQuant(BaseChatModel):
    """Chat with a weight-only quantized Hugging Face model (loaded lazily, on the first call).

    ``ChatQuant(model="path/or/id", quantization_config=QuantConfig(...))``, or
    ``ChatQuant(llm=QuantLLM(...))`` to share an existing QuantLLM's model. Messages go through
    the tokenizer's chat template (or ``chat_template``). ``bind_tools`` and ``with_structured_output``
    constrain the reply with a grammar (the ``structured`` extra, llguidance), so a forced tool call or a
    structured reply is always valid; see ``langchain_quant.tools`` for the formats. Text content only.
    """
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    llm: QuantLLM | None = None
    """A QuantLLM whose model and engine to use (``model`` and loading options are then ignored)."""
    model_name: str | None = Field(default=None, alias="model")
    """Local folder, ``.gguf`` file, quantllm-saved folder or hub id; None: the embedded SmolLM2-135M-Instruct."""
    quantization_config: Any = None
    """QuantConfig / WeightOnlyQuantConfig / dict / None (float model). A quantllm-saved folder takes None or
    the config it was saved with (another one is an error)."""
    model_kwargs: dict | None = None
    """transformers ``from_pretrained`` keywords, passed through (``dtype``, ``revision``, ``attn_implementation``,
    ...; ``trust_remote_code`` is off by default); a ``device_map`` here works as the field."""
    device: Any = -1
    """-1 or "cpu", "cuda", or a GPU index."""
    device_map: Any = None
    """transformers' device_map: "auto" (a GPU if any), "cpu", "cuda:1", or a dict placing every module on one device."""
    chat_template: str | None = None
    """A Jinja chat template to use instead of (or for want of) the tokenizer's own (for this ChatQuant only:
    the model's engine, shared with every other wrapper of it, is left as it is)."""
    temperature: float = 0.0
    """Sampling temperature; 0 decodes greedily."""
    max_tokens: int = Field(default=256, alias="max_new_tokens")
    """Most tokens to generate per reply."""
    top_p: float = 1.0
    """Nucleus sampling mass (sampling only)."""
    top_k: int = 0
    """Sample among the k likeliest tokens; 0 disables it."""
    repetition_penalty: float = 1.0
    """CTRL-style penalty on tokens already in the conversation; 1.0 disables it."""
    seed: int | None = None
    """Seed for sampling, for reproducible replies."""
    stop: list[str] | None = None
    """Strings that end a reply (the reply is cut before them)."""
    max_string_chars: int | None = 160
    """Longest free string (characters) in a tool call or structured reply: strings whose schema sets no
    limit get this ``maxLength``, so that a small model repeating itself inside a string still finishes
    the JSON within ``max_tokens``. None: unbounded."""
    streaming: bool = False
    """Stream by default when ``invoke`` is called inside a streaming run."""
    batch_size: int = 16
    """Most concurrent requests decoded together in one batch (as ``QuantLLM``'s)."""
    n_threads: int | None = None
    """CPU threads of each forward pass (as ``LlamaCpp``'s); None: the physical cores (or ``llm``'s setting).
    One setting per model: wrappers sharing a model share its engine, and the last one given applies."""
    timeout: float | None = None
    """Not used: local generation has no network timeout (accepted for LangChain's standard parameters)."""
    max_retries: int | None = None
    """Not used: local generation is not retried (accepted for LangChain's standard parameters)."""
    api_key: str | None = None
    """Not used: a local model needs no key (accepted so code written for hosted models runs unchanged)."""

    _engine: Any = PrivateAttr(default=None)
    _tool_format: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> "ChatQuant":
        as_quant_config(self.quantization_config)
        loading_options(self.model_kwargs, device_map=self.device_map)
        check_threads(self.n_threads)
        self._defaults()  # bad generation settings fail at construction
        return self

    # ---- the engine ------------------------------------------------------------------
    def get_engine(self) -> GenerationEngine:
        """The model's one generation engine, loading (and quantizing) the model on first use."""
        if self._engine is None:
            llm = self.llm or QuantLLM(model_id=self.model_name, quantization_config=self.quantization_config,
                                       model_kwargs=self.model_kwargs, device=self.device,
                                       device_map=self.device_map, batch_size=self.batch_size,
                                       n_threads=self.n_threads)
            self._engine = llm.get_engine()
            self._engine.n_threads = self.n_threads or self._engine.n_threads
        return self._engine

    def render(self, messages: list[BaseMessage], **call: Any) -> str:
        """LangChain messages (and a call's ``tools``/``tool_choice``/``response_format``) -> the prompt text."""
        return self._plan(messages, call).prompt

    def tool_format(self):
        """``TEMPLATE`` if the chat template renders ``tools=``, else ``BUILTIN`` (langchain_quant.tools)."""
        if self._tool_format is None:
            renders = self.get_engine().template_renders_tools(self.chat_template)
            self._tool_format = TEMPLATE if renders else BUILTIN
        return self._tool_format

    # ---- tools and structured output ----------------------------------------------------
    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable | BaseTool], *,
                   tool_choice: str | bool | dict | None = None, parallel_tool_calls: bool | None = None,
                   **kwargs: Any) -> Runnable:
        """Bind tools (Pydantic classes, functions, ``@tool``s, OpenAI dicts). ``tool_choice``: "auto" (default:
        text or calls), "any" (at least one call), a tool's name (calls of it), "none" (no tools shown).
        ``parallel_tool_calls=False`` allows one call per reply. Every argument is checked here, before
        any model is loaded."""
        specs = tool_specs(tools)
        choice = normalize_tool_choice(tool_choice, [s["function"]["name"] for s in specs])
        if choice != "none":
            require_library()
            tool_call_constraint(specs, choice, BUILTIN).check()
            tool_call_constraint(specs, choice, TEMPLATE).check()
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = bool(parallel_tool_calls)
        return self.bind(tools=specs, tool_choice=choice, **kwargs)

    def with_structured_output(self, schema: dict | type | None = None, *, method: str = "json_schema",
                               include_raw: bool = False, strict: bool | None = None, **kwargs: Any) -> Runnable:
        """Replies parsed into ``schema`` (Pydantic class -> instance; TypedDict or JSON schema -> dict).
        ``method``: "json_schema" (the reply is constrained to the schema), "function_calling" (a forced,
        constrained call of the schema as a tool) or "json_mode" (any JSON object; ask for JSON in the prompt).
        ``include_raw=True`` returns ``{"raw", "parsed", "parsing_error"}``."""
        return structured_output(self, schema, method=method, include_raw=include_raw, strict=strict, **kwargs)

    # ---- token counting with the model's own tokenizer (LangChain's default fetches GPT-2's) ----
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the model's tokenizer (``custom_get_token_ids`` when set, as LangChain does)."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        return list(self.get_engine().tokenizer(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Any = None) -> int:
        """The exact prompt length of ``messages`` (with ``tools`` shown as a call with them shows them):
        their chat-template rendering, in the model's tokens (what ``usage_metadata["input_tokens"]`` says)."""
        return self.get_engine().prompt_tokens(self.render(messages, tools=tools) if tools else self.render(messages))

    # ---- LangChain's chat model interface ----------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "quantllm-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self._name(), "quantization_config": self.quantization_config,
                **self._defaults_dict()}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="quantllm", ls_model_name=kwargs.get("model", self._name()),
                                 ls_model_type="chat", ls_temperature=kwargs.get("temperature", self.temperature),
                                 ls_max_tokens=kwargs.get("max_tokens", self.max_tokens))
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        call = {key: kwargs.pop(key) for key in CALL_KEYS if key in kwargs}
        params = self._defaults(kwargs, stop)
        plan = self._plan(messages, call)
        out = self.get_engine().generate([plan.prompt], params, [plan.constraint])[0]
        message = plan.message(out.text, usage_metadata=_usage(out), response_metadata=self._metadata(out))
        return ChatResult(generations=[ChatGeneration(message=message,
                                                      generation_info={"finish_reason": out.finish_reason})],
                          llm_output={"model_name": self._name(), "token_usage": _usage(out)})

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        call = {key: kwargs.pop(key) for key in CALL_KEYS if key in kwargs}
        params = self._defaults(kwargs, stop)
        plan = self._plan(messages, call)
        calls = ToolCallStream(plan.tool_names) if plan.tool_names else None
        text = ""
        for delta, final in self.get_engine().stream_with_output(plan.prompt, params, plan.constraint):
            text += delta
            if calls is not None and final is None:
                delta = calls.feed(text)
            if final is None:
                if not delta:
                    continue
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            else:
                if calls is not None:
                    yield ChatGenerationChunk(message=calls.finish(text))
                chunk = ChatGenerationChunk(
                    message=AIMessageChunk(content="", usage_metadata=_usage(final), chunk_position="last",
                                           response_metadata=self._metadata(final)),
                    generation_info={"finish_reason": final.finish_reason})
            if run_manager and delta:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk

    # ---- helpers -------------------------------------------------------------------------
    def _plan(self, messages: list[BaseMessage], call: dict[str, Any]) -> ChatPlan:
        fmt = self.tool_format() if call.get("tools") or has_tool_turns(messages) else BUILTIN
        return plan_call(self.get_engine(), messages, call, self.chat_template, fmt, self.max_string_chars)

    def _name(self) -> str:
        if self.llm is not None:
            return self.llm.model_id or DEFAULT_MODEL_NAME
        return self.model_name or DEFAULT_MODEL_NAME

    def _defaults_dict(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "repetition_penalty": self.repetition_penalty, "seed": self.seed,
                "stop": self.stop}

    def _defaults(self, overrides: dict[str, Any] | None = None, stop: list[str] | None = None):
        return GenerationParams.from_kwargs(self._defaults_dict(), overrides, stop=stop)

    def _metadata(self, out) -> dict[str, Any]:
        return {"model_name": self._name(), "model_provider": "quantllm", "finish_reason": out.finish_reason}


def _usage(out: GenerationOutput) -> UsageMetadata:
    """The engine's token counts under LangChain's names."""
    return UsageMetadata(input_tokens=out.prompt_tokens, output_tokens=out.completion_tokens,
                         total_tokens=out.total_tokens)

"""ChatQuant: a LangChain chat model over a weight-only quantized model, through its chat template."""
from __future__ import annotations

from typing import Any, Iterator

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from quant_core.auto import as_quant_config
from quant_core.cpu_threads import check_threads
from quant_core.engine import GenerationEngine, GenerationOutput, GenerationParams
from quant_core.errors import ConfigError
from quant_core.load_options import loading_options

from .llms import DEFAULT_MODEL_NAME, QuantLLM

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}


class ChatQuant(BaseChatModel):
    """Chat with a weight-only quantized Hugging Face model (loaded lazily, on the first call).

    ``ChatQuant(model="path/or/id", quantization_config=QuantConfig(...))``, or
    ``ChatQuant(llm=QuantLLM(...))`` to share an existing QuantLLM's model. Messages go through
    the tokenizer's chat template (or ``chat_template``); tool calling, structured output and
    non-text content are not supported.
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
    streaming: bool = False
    """Stream by default when ``invoke`` is called inside a streaming run."""
    batch_size: int = 4
    """Most concurrent requests decoded together in one batch."""
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

    def render(self, messages: list[BaseMessage]) -> str:
        """LangChain messages -> the prompt text the model sees."""
        return self.get_engine().render_chat([_as_dict(m) for m in messages], add_generation_prompt=True,
                                             chat_template=self.chat_template)

    # ---- token counting with the model's own tokenizer (LangChain's default fetches GPT-2's) ----
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the model's tokenizer (``custom_get_token_ids`` when set, as LangChain does)."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        return list(self.get_engine().tokenizer(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Any = None) -> int:
        """The exact prompt length of ``messages``: their chat-template rendering, in the model's tokens
        (what ``usage_metadata["input_tokens"]`` of the reply will say)."""
        if tools:
            raise ConfigError("counting tokens with tools is not supported: ChatQuant renders no tool definitions")
        return self.get_engine().prompt_tokens(self.render(messages))

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
        params = self._defaults(kwargs, stop)
        prompt = self.render(messages)
        out = self.get_engine().generate([prompt], params)[0]
        message = AIMessage(content=out.text, usage_metadata=_usage(out),
                            response_metadata=self._metadata(out))
        return ChatResult(generations=[ChatGeneration(message=message,
                                                      generation_info={"finish_reason": out.finish_reason})],
                          llm_output={"model_name": self._name(), "token_usage": _usage(out)})

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        params = self._defaults(kwargs, stop)
        prompt = self.render(messages)
        for delta, final in self.get_engine().stream_with_output(prompt, params):
            if final is None:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            else:
                chunk = ChatGenerationChunk(
                    message=AIMessageChunk(content="", usage_metadata=_usage(final), chunk_position="last",
                                           response_metadata=self._metadata(final)),
                    generation_info={"finish_reason": final.finish_reason})
            if run_manager and delta:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk

    # ---- helpers -------------------------------------------------------------------------
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


def _as_dict(message: BaseMessage) -> dict[str, str]:
    role = getattr(message, "role", None) or _ROLES.get(message.type)
    if role is None:
        raise ConfigError(f"message type {message.type!r} has no chat role; use system, human or ai messages")
    content = message.content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(block.get("text", ""))
            else:
                kind = block.get("type") if isinstance(block, dict) else type(block).__name__
                raise ConfigError(f"ChatQuant handles text only; a message holds a {kind!r} block "
                                  f"(images, audio, files and tool calls are not supported)")
        content = "".join(parts)
    return {"role": role, "content": content}

"""QuantLlamaLLM: a LlamaIndex ``CustomLLM`` running a (quantized) local model through
quant_core's shared ``GenerationEngine``. It formats prompts and wraps results; the
engine does all generation (batching, stop strings, streaming, token counts)."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import Any, Sequence

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import EventPayload
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from quant_core.auto import engine_for_model, engine_for_source
from quant_core.config import QuantConfig
from quant_core.engine import GenerationEngine, GenerationParams
from quant_core.errors import ConfigError

from .responses import completion_response, in_thread, llm_events, to_chat, usage_of

log = logging.getLogger("llamaindex_quant")

PARAM_NAMES = tuple(f.name for f in dataclasses.fields(GenerationParams))
# LlamaIndex roles that chat templates know under another name.
ROLE_NAMES = {MessageRole.CHATBOT: "assistant", MessageRole.MODEL: "assistant", MessageRole.DEVELOPER: "system"}
DEFAULT_NUM_OUTPUT = 256


class QuantLlamaLLM(CustomLLM):
    """A local, optionally quantized, Hugging Face causal LM as a LlamaIndex LLM.

    Build it from a source (``None`` = the embedded SmolLM2-135M-Instruct, a hub id, a
    local directory, a ``.gguf`` file or a quantllm-saved directory) plus an optional
    ``QuantConfig`` applied after loading::

        llm = QuantLlamaLLM("path/or/id", quant_config=QuantConfig(weight_dtype="int4"))

    or from a model already in memory: ``QuantLlamaLLM.from_model(model, tokenizer)``.
    Generation keyword arguments (``max_new_tokens``, ``temperature``, ``top_p``,
    ``top_k``, ``repetition_penalty``, ``stop``, ``seed``) are defaults here and can be
    overridden per call. Token counts are in ``response.additional_kwargs`` and
    ``response.raw["usage"]`` (read by LlamaIndex's ``TokenCountingHandler``).
    """

    model_name: str = Field(default="quantllm", description="What the model was loaded from (for logs).")
    max_new_tokens: int | None = Field(
        default=None, description="Tokens to generate; None: the model's generation_config, else 256.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 is greedy decoding.")
    generate_kwargs: dict[str, Any] = Field(
        default_factory=dict, description=f"Default generation settings, any of: {', '.join(PARAM_NAMES)}.")
    context_window_override: int | None = Field(
        default=None, gt=0, description="Use this context window instead of the model config's.")
    truncate_prompt: bool = Field(
        default=False, description="Cut the start of a prompt that does not fit the context window "
                                   "(logged, and counted in additional_kwargs) instead of raising.")
    use_chat_template: bool = Field(
        default=True, description="Format chat messages with the tokenizer's chat template when it has one.")
    max_batch_size: int = Field(default=8, gt=0, description="Prompts per forward pass in batch calls.")

    _engine: GenerationEngine = PrivateAttr()

    def __init__(self, model: str | os.PathLike | None = None, quant_config: QuantConfig | dict | None = None,
                 *, tokenizer: Any = None, engine: GenerationEngine | None = None, device: str = "cpu",
                 trust_remote_code: bool = False, **fields: Any):
        if isinstance(model, (str, os.PathLike)) or model is None:
            fields.setdefault("model_name", "SmolLM2-135M-Instruct" if model is None else os.fspath(model))
        else:
            fields.setdefault("model_name", getattr(getattr(model, "config", None), "_name_or_path", "") or
                              type(model).__name__)
        GenerationParams.check_keywords(fields.get("generate_kwargs"), "generate_kwargs")  # before loading
        super().__init__(**fields)
        if engine is None:
            # one engine per model: wrappers of the same model (LangChain's too) share its lock and batches
            engine = _engine_for(model, tokenizer, quant_config, device, trust_remote_code, self.max_batch_size)
        elif quant_config is not None:
            raise ConfigError("pass either engine= (an already prepared model) or quant_config=, not both")
        self._engine = engine
        if self.max_new_tokens is None:
            gen_cfg = getattr(engine.model, "generation_config", None)
            self.max_new_tokens = getattr(gen_cfg, "max_new_tokens", None) or DEFAULT_NUM_OUTPUT

    @classmethod
    def from_model(cls, model, tokenizer, quant_config: QuantConfig | dict | None = None,
                   **fields: Any) -> "QuantLlamaLLM":
        """Wrap a loaded transformers model (quantized in place first when ``quant_config`` is given; an
        already quantized model takes None or the config it carries, and another one is an error)."""
        return cls(model, quant_config, tokenizer=tokenizer, **fields)

    @classmethod
    def class_name(cls) -> str:
        return "QuantLlamaLLM"

    @property
    def engine(self) -> GenerationEngine:
        return self._engine

    @property
    def context_window(self) -> int:
        return self.context_window_override or self._engine.context_window

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=self.use_chat_template and self._engine.has_chat_template,
            model_name=self.model_name,
        )

    # ---- completion -------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete_many([prompt], formatted, kwargs)[0]

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._stream(prompt, formatted, kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        # The model runs in a worker thread so the event loop stays free while it generates.
        responses = await asyncio.to_thread(self._complete_many, [prompt], formatted, kwargs)
        return responses[0]

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        return in_thread(self._stream(prompt, formatted, kwargs))

    def complete_batch(self, prompts: Sequence[str], formatted: bool = False,
                       **kwargs: Any) -> list[CompletionResponse]:
        """Complete several prompts together: one forward pass per decoding step for up to
        ``max_batch_size`` prompts (the engine's real batching). Callbacks fire per prompt."""
        prompts = list(prompts)
        with llm_events(self, [{EventPayload.PROMPT: p} for p in prompts]) as finish:
            responses = self._complete_many(prompts, formatted, kwargs)
            finish([{EventPayload.PROMPT: p, EventPayload.COMPLETION: r} for p, r in zip(prompts, responses)])
        return responses

    # ---- chat -------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return to_chat(self.complete_formatted(self.render_messages(messages), kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return (to_chat(r) for r in self._stream(self.render_messages(messages), True, kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        prompt = self.render_messages(messages)
        return to_chat(await asyncio.to_thread(self.complete_formatted, prompt, kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        prompt = self.render_messages(messages)
        return in_thread(to_chat(r) for r in self._stream(prompt, True, kwargs))

    def chat_batch(self, conversations: Sequence[Sequence[ChatMessage]], **kwargs: Any) -> list[ChatResponse]:
        """Answer several conversations in one batched generation (see ``complete_batch``)."""
        conversations = [list(c) for c in conversations]
        prompts = [self.render_messages(c) for c in conversations]
        with llm_events(self, [{EventPayload.MESSAGES: c} for c in conversations]) as finish:
            responses = [to_chat(r) for r in self._complete_many(prompts, True, kwargs)]
            finish([{EventPayload.MESSAGES: c, EventPayload.RESPONSE: r} for c, r in zip(conversations, responses)])
        return responses

    def render_messages(self, messages: Sequence[ChatMessage]) -> str:
        """Chat messages -> prompt text: the chat template when there is one, else ``messages_to_prompt``."""
        if self.use_chat_template and self._engine.has_chat_template:
            return self._engine.render_chat([{"role": ROLE_NAMES.get(m.role, m.role.value),
                                              "content": m.content or ""} for m in messages])
        return self.messages_to_prompt(messages)

    def complete_formatted(self, prompt: str, kwargs: dict) -> CompletionResponse:
        return self._complete_many([prompt], True, kwargs)[0]

    # ---- internals --------------------------------------------------------------
    def _params(self, kwargs: dict) -> GenerationParams:
        defaults = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature}
        return GenerationParams.from_kwargs(defaults, self.generate_kwargs, kwargs)

    def _fit(self, prompt: str, formatted: bool, params: GenerationParams) -> tuple[str, int]:
        """Apply ``completion_to_prompt`` and make sure prompt + completion fit the context window.
        Returns the prompt to run and how many tokens were cut from its start (0 if none)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, not {type(prompt).__name__}")
        if not formatted:
            prompt = self.completion_to_prompt(prompt)
        tokenizer, window = self._engine.tokenizer, self.context_window
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        room = window - params.max_new_tokens - 1  # one slot for a BOS the engine may add
        if len(ids) <= room:
            return prompt, 0
        if room <= 0:
            raise ConfigError(f"max_new_tokens={params.max_new_tokens} leaves no room for a prompt in the "
                              f"context window of {window} tokens; lower max_new_tokens")
        if not self.truncate_prompt:
            raise ConfigError(
                f"prompt is {len(ids)} tokens; with max_new_tokens={params.max_new_tokens} it does not fit the "
                f"model's context window of {window} tokens (room for {room} prompt tokens). Shorten the prompt "
                f"(in RAG: fewer or smaller chunks), lower max_new_tokens, or pass truncate_prompt=True to cut "
                f"the start of the prompt")
        cut = len(ids) - room
        log.warning("prompt of %d tokens cut to its last %d to fit the context window of %d tokens "
                    "(truncate_prompt=True)", len(ids), room, window)
        return tokenizer.decode(ids[cut:]), cut

    def _complete_many(self, prompts: list[str], formatted: bool, kwargs: dict) -> list[CompletionResponse]:
        if isinstance(prompts, str) or not prompts:
            raise ConfigError("pass a non-empty list of prompt strings")
        params = self._params(kwargs)
        fitted = [self._fit(p, formatted, params) for p in prompts]
        outputs = self._engine.generate([p for p, _ in fitted], params)
        return [completion_response(out, cut) for out, (_, cut) in zip(outputs, fitted)]

    def _stream(self, prompt: str, formatted: bool, kwargs: dict) -> CompletionResponseGen:
        params = self._params(kwargs)  # errors raise here, before the generator starts
        prompt, cut = self._fit(prompt, formatted, params)
        pairs = self._engine.stream_with_output(prompt, params)

        def gen() -> CompletionResponseGen:
            # The engine's last pair carries the finish reason and exact token counts.
            text = ""
            for delta, final in pairs:
                text += delta
                if final is None:
                    yield CompletionResponse(text=text, delta=delta)
            usage = usage_of(final, cut)
            yield CompletionResponse(text=text, delta="", raw={"usage": usage}, additional_kwargs=usage)
        return gen()


def _engine_for(model, tokenizer, quant_config, device, trust_remote_code, max_batch_size) -> GenerationEngine:
    """A source goes through the core's cached load-then-quantize step (shared with the LangChain
    provider: one copy of a model per source and config in a process); a model object is quantized
    in place once (when a config is given). Either way the model's one engine comes back."""
    if model is None or isinstance(model, (str, os.PathLike)):
        if tokenizer is not None:
            raise ConfigError("tokenizer= is only for a model object; a model source brings its own tokenizer")
        return engine_for_source(model, quantization_config=quant_config, device=device,
                                 trust_remote_code=trust_remote_code, max_batch_size=max_batch_size)
    if not hasattr(model, "config") or not callable(model):
        raise TypeError(f"model must be a source (None, a hub id, a path) or a loaded transformers model, "
                        f"not {type(model).__name__}")
    if tokenizer is None:
        raise ConfigError("a model object needs its tokenizer: QuantLlamaLLM.from_model(model, tokenizer)")
    return engine_for_model(model, tokenizer, quant_config, max_batch_size=max_batch_size)

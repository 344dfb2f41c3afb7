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
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.callbacks import EventPayload
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.prompts import PromptTemplate

from quant_core.config import QuantConfig
from quant_core.engine import GenerationEngine, GenerationParams
from quant_core.errors import ConfigError, UnknownSettingError

from .engine_setup import LoadRequest, build_engine
from .prompts import chat_prompt, completion_prompt
from .responses import completion_response, in_thread, llm_events, to_chat, usage_of

log = logging.getLogger("llamaindex_quant")

PARAM_NAMES = tuple(f.name for f in dataclasses.fields(GenerationParams))
DEFAULT_NUM_OUTPUT = 256
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
# The engine passes only these tokenizer outputs to the model; HuggingFaceLLM's
# tokenizer_outputs_to_remove may name any other (it is left out already) but not these.
MODEL_INPUTS = ("input_ids", "attention_mask")


class QuantLlamaLLM(CustomLLM):
    """A local, optionally quantized, Hugging Face causal LM as a LlamaIndex LLM.

    Build it from a source (``None`` = the embedded SmolLM2-135M-Instruct, a hub id, a
    local directory, a ``.gguf`` file or a quantllm-saved directory) plus an optional
    ``QuantConfig`` applied after loading::

        llm = QuantLlamaLLM("path/or/id", quant_config=QuantConfig(weight_dtype="int4"))

    or from a model already in memory: ``QuantLlamaLLM.from_model(model, tokenizer)``.
    It takes ``HuggingFaceLLM``'s constructor arguments with their meaning (``model_name``,
    ``tokenizer_name``, ``context_window``, ``device_map``, ``model_kwargs``, ``tokenizer_kwargs``,
    ``stopping_ids``, ``generate_kwargs``, ``system_prompt``, ``query_wrapper_prompt``,
    ``completion_to_prompt``, ``messages_to_prompt``, ``is_chat_model``, ...); an unknown one is an
    error. Generation settings are defaults here and can be overridden per call. Token counts are in
    ``response.additional_kwargs`` and ``response.raw["usage"]`` (read by LlamaIndex's
    ``TokenCountingHandler``); ``get_token_ids`` counts with the model's own tokenizer
    (``Settings.tokenizer = llm.get_token_ids``).
    """
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(default=EMBEDDED_NAME, description=(
        "The model to load when no model is passed (a hub id, a directory, a .gguf file), as HuggingFaceLLM's "
        "model_name; otherwise the model's name in metadata."))
    context_window: int | None = Field(default=None, gt=0, description=(
        "Most tokens of prompt plus completion; None: the model's own. A larger value than the model's is "
        "lowered to it with a warning, as HuggingFaceLLM does."))
    max_new_tokens: int | None = Field(
        default=None, description="Tokens to generate; None: the model's generation_config, else 256.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 is greedy decoding.")
    tokenizer_name: str | None = Field(
        default=None, description="Load this tokenizer instead of the model's own (a hub id or directory).")
    tokenizer_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keywords for AutoTokenizer.from_pretrained (the tokenizer is reloaded).")
    tokenizer_outputs_to_remove: list[str] = Field(default_factory=list, description=(
        "Tokenizer outputs not to pass to the model. The engine passes only input_ids and attention_mask, so "
        "any other is left out already; those two cannot be."))
    device_map: str | dict[str, Any] | None = Field(default=None, description=(
        "Where to load the model, as transformers' device_map: 'auto' (a GPU if there is one), 'cpu', "
        "'cuda:1', or a dict placing every module on one device."))
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keywords for the model's from_pretrained (dtype, revision, ...).")
    stopping_ids: list[int] = Field(
        default_factory=list, description="Token ids that end a completion, beside the model's EOS.")
    generate_kwargs: dict[str, Any] = Field(
        default_factory=dict, description=f"Default generation settings, any of: {', '.join(PARAM_NAMES)}, "
                                          f"do_sample, eos_token_id.")
    is_chat_model: bool | None = Field(default=None, description=(
        "Whether LlamaIndex should call chat() rather than complete(); None: when the chat template is used."))
    truncate_prompt: bool = Field(
        default=False, description="Cut the start of a prompt that does not fit the context window "
                                   "(logged, and counted in additional_kwargs) instead of raising.")
    use_chat_template: bool = Field(
        default=True, description="Format prompts with the tokenizer's chat template when it has one.")
    max_batch_size: int = Field(default=16, gt=0, description="Prompts per forward pass in batch calls (as QuantLLM's batch_size).")
    n_threads: int | None = Field(default=None, gt=0, description=(
        "CPU threads of each forward pass (as LlamaCPP's); None: the physical cores. One setting per model: "
        "wrappers sharing a model share its engine, and the last one given applies."))

    _engine: GenerationEngine = PrivateAttr()

    def __init__(self, model: Any = None, quant_config: QuantConfig | dict | None = None, *, tokenizer: Any = None,
                 engine: GenerationEngine | None = None, device: Any = None, trust_remote_code: bool = False,
                 **fields: Any):
        _check_field_names(fields)
        if model is None and fields.get("model_name"):  # HuggingFaceLLM(model_name=...) loads that model
            model = fields["model_name"]
        fields.setdefault("model_name", _name_of(model))
        if isinstance(fields.get("query_wrapper_prompt"), str):
            fields["query_wrapper_prompt"] = PromptTemplate(fields["query_wrapper_prompt"])
        _check_generation_fields(fields)  # before loading
        super().__init__(**fields)
        if engine is None:
            # one engine per model: wrappers of the same model (LangChain's too) share its lock and batches
            engine = build_engine(LoadRequest(
                model=model, tokenizer=tokenizer, quant_config=quant_config, device=device,
                device_map=self.device_map, model_kwargs=self.model_kwargs, tokenizer_name=self.tokenizer_name,
                tokenizer_kwargs=self.tokenizer_kwargs, trust_remote_code=trust_remote_code,
                max_batch_size=self.max_batch_size, n_threads=self.n_threads))
        elif quant_config is not None:
            raise ConfigError("pass either engine= (an already prepared model) or quant_config=, not both")
        self._engine = engine
        engine.n_threads = self.n_threads or engine.n_threads
        self._fit_context_window()
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
    def uses_chat_template(self) -> bool:
        return self.use_chat_template and self._engine.has_chat_template

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=self.uses_chat_template if self.is_chat_model is None else self.is_chat_model,
            model_name=self.model_name,
        )

    # ---- token counting with the model's own tokenizer (no download, unlike LlamaIndex's tiktoken default) ----
    def get_token_ids(self, text: str) -> list[int]:
        """The model tokenizer's ids of ``text`` (no special tokens); ``Settings.tokenizer = llm.get_token_ids``
        makes LlamaIndex's prompt fitting and token counting use them."""
        return list(self._engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens(self, text: str) -> int:
        return len(self.get_token_ids(text))

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

    def complete_batch(self, prompts: Sequence[str], formatted: bool = False, *, return_exceptions: bool = False,
                       **kwargs: Any) -> list[CompletionResponse | Exception]:
        """Complete several prompts together: one forward pass per decoding step for up to
        ``max_batch_size`` prompts (the engine's real batching). Callbacks fire per prompt.
        ``return_exceptions=True``: a prompt that cannot run (too long for the context window) gets
        its error as its result, and the others still run together."""
        prompts = list(prompts)
        with llm_events(self, [{EventPayload.PROMPT: p} for p in prompts]) as finish:
            responses = self._complete_many(prompts, formatted, kwargs, return_exceptions)
            finish([_end_payload(r, {EventPayload.PROMPT: p, EventPayload.COMPLETION: r})
                    for p, r in zip(prompts, responses)])
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

    def chat_batch(self, conversations: Sequence[Sequence[ChatMessage]], *, return_exceptions: bool = False,
                   **kwargs: Any) -> list[ChatResponse | Exception]:
        """Answer several conversations in one batched generation (see ``complete_batch``)."""
        conversations = [list(c) for c in conversations]
        prompts = [_result_of(self.render_messages, c, catch=return_exceptions) for c in conversations]
        with llm_events(self, [{EventPayload.MESSAGES: c} for c in conversations]) as finish:
            responses = [r if isinstance(r, Exception) else to_chat(r)
                         for r in self._complete_many(prompts, True, kwargs, return_exceptions)]
            finish([_end_payload(r, {EventPayload.MESSAGES: c, EventPayload.RESPONSE: r})
                    for c, r in zip(conversations, responses)])
        return responses

    def render_messages(self, messages: Sequence[ChatMessage]) -> str:
        """Chat messages -> prompt text (``messages_to_prompt`` if given, else the chat template; see prompts.py)."""
        return chat_prompt(self, messages)

    def render_completion(self, prompt: str) -> str:
        """A completion prompt -> the text the model reads (query_wrapper_prompt, completion_to_prompt or the
        chat template, system_prompt; see prompts.py)."""
        return completion_prompt(self, prompt)

    def complete_formatted(self, prompt: str, kwargs: dict) -> CompletionResponse:
        return self._complete_many([prompt], True, kwargs)[0]

    # ---- internals --------------------------------------------------------------
    def _params(self, kwargs: dict) -> GenerationParams:
        defaults = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                    "stop_token_ids": self.stopping_ids}
        return GenerationParams.from_kwargs(defaults, self.generate_kwargs, kwargs)

    def _fit_context_window(self) -> None:
        own = self._engine.context_window
        if self.context_window is None:
            self.context_window = own
        elif self.context_window > own:
            log.warning("context_window=%d is more than the model's %d tokens; using %d",
                        self.context_window, own, own)
            self.context_window = own

    def _fit(self, prompt: str, formatted: bool, params: GenerationParams) -> tuple[str, int]:
        """Format the prompt (``render_completion``) and make sure prompt + completion fit the context window.
        Returns the prompt to run and how many tokens were cut from its start (0 if none)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, not {type(prompt).__name__}")
        if not formatted:
            prompt = self.render_completion(prompt)
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

    def _complete_many(self, prompts: list, formatted: bool, kwargs: dict,
                       return_exceptions: bool = False) -> list[CompletionResponse | Exception]:
        """Responses in order; with ``return_exceptions`` a prompt's error (or an Exception given in
        place of a prompt) is its result and the other prompts still run as one batch."""
        if isinstance(prompts, str) or not prompts:
            raise ConfigError("pass a non-empty list of prompt strings")
        params = self._params(kwargs)
        results = [p if isinstance(p, Exception) else _result_of(self._fit, p, formatted, params,
                                                                 catch=return_exceptions) for p in prompts]
        runnable = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
        outputs = self._engine.generate([results[i][0] for i in runnable], params) if runnable else []
        for i, out in zip(runnable, outputs):
            results[i] = completion_response(out, results[i][1])
        return results

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



def _name_of(model) -> str:
    if model is None:
        return EMBEDDED_NAME
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__


def _check_field_names(fields: dict) -> None:
    """An argument QuantLlamaLLM does not know is an error naming it (pydantic would say less)."""
    unknown = sorted(set(fields) - set(QuantLlamaLLM.model_fields))
    if unknown:
        raise UnknownSettingError(f"QuantLlamaLLM got unknown argument(s) {unknown}; it takes model, quant_config, "
                                  f"tokenizer, engine, device, trust_remote_code and the fields "
                                  f"{', '.join(sorted(QuantLlamaLLM.model_fields))}")


def _check_generation_fields(fields: dict) -> None:
    GenerationParams.check_keywords(fields.get("generate_kwargs"), "generate_kwargs")
    GenerationParams.from_kwargs(fields.get("generate_kwargs"), {"stop_token_ids": fields.get("stopping_ids")})
    kept = sorted(set(fields.get("tokenizer_outputs_to_remove") or []) & set(MODEL_INPUTS))
    if kept:
        raise ConfigError(f"tokenizer_outputs_to_remove names {kept}: the model needs {' and '.join(MODEL_INPUTS)}; "
                          f"every other tokenizer output is never passed to it")


def _result_of(fn, *args, catch: bool):
    """``fn(*args)``, or with ``catch`` the exception it raised."""
    if not catch:
        return fn(*args)
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - handed back to the caller as this item's result
        return exc


def _end_payload(result, payload: dict) -> dict:
    # a failed item ends its event as LlamaIndex's own callbacks end a failed call
    return {EventPayload.EXCEPTION: result} if isinstance(result, Exception) else payload

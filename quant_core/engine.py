"""One generation engine, shared by the LangChain and LlamaIndex providers.

It takes a (quantized or float) transformers model and its tokenizer and runs a
batch of prompts together: prompts are left-padded, and every decoding step is
ONE forward pass for the whole batch (decoder-only and encoder-decoder models).
It applies the sampling settings, cuts text before stop strings, stops as soon as
every row is done, counts tokens and streams text deltas. A row may carry a ``Constraint``
(quant_core.constrained: a JSON schema, regex or grammar); its disallowed tokens are masked
before each pick, and rows with and without constraints share one batch.

Decoder-only models decode with quant_core.decode's lean step (no transformers modules per
token; on CPU and on CUDA) where it fits, else through transformers' modules over a static or dynamic cache
(``decode_step``; ``$QUANTLLM_DECODE_STEP=transformers`` brings back the module path everywhere).

Threads: every forward pass holds the model's one lock, so passes of different calls never
interleave. Concurrent ``generate`` calls queue up; the thread that gets to run
takes the other waiting calls with the same settings into its batch
(micro-batching), up to ``max_batch_size`` prompts.
"""
from __future__ import annotations

import inspect
import os
import threading
import weakref
from typing import Iterator

import torch

from .constrained import BatchMask, Constraint, grammars_for
from .cpu_threads import check_threads, physical_cores, torch_threads
from .engine_rows import Row, choose_next_tokens, device_of, eos_ids, first_not_none, logits_width
from .engine_steppers import DynamicStepper, Seq2SeqStepper, StaticStepper
from .engine_types import GenerationOutput, GenerationParams
from .errors import ConfigError

__all__ = ["DECODE_STEP_ENV", "GenerationEngine", "GenerationOutput", "GenerationParams"]

DECODE_STEP_ENV = "QUANTLLM_DECODE_STEP"  # the default of ``decode_step`` when the caller gives none
DECODE_STEPS = {"auto": None, "lean": True, "transformers": False}  # -> make_decoder's ``lean``


class _Request:
    def __init__(self, encoded: list[list[int]], params: GenerationParams, constraints: list[Constraint | None]):
        self.encoded, self.params, self.constraints = encoded, params, constraints
        self.outputs: list[GenerationOutput] | None = None
        self.error: BaseException | None = None
        self.done = False


# model -> its engine, and model -> its forward lock; kept beside the model, not on it, so the
# model stays deep-copyable (a lock cannot be copied) and both go away with the model.
_ENGINES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_FORWARD_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.RLock()  # for_model builds an engine, which takes its forward lock, inside it


def forward_lock_of(model) -> threading.Lock:
    """The one lock of ``model``'s forward passes, however many engines serve it (one built by a
    user, one per tokenizer), so that passes on the same weights never interleave."""
    with _REGISTRY_LOCK:
        return _FORWARD_LOCKS.setdefault(model, threading.Lock())


class GenerationEngine:
    """Batched generation with left padding, stop strings, streaming and token counts."""

    def __init__(self, model, tokenizer, *, max_batch_size: int = 8, chat_template: str | None = None,
                 kv_cache: str = "auto", decode_step: str | None = None, n_threads: int | None = None):
        """``kv_cache``: "static" (quant_core.decode's preallocated cache: no per-step growth),
        "dynamic" (transformers' own), or "auto": static for decoder-only models that transformers
        marks as compilable (static-cache capable), dynamic otherwise and for encoder-decoders.
        ``decode_step`` (static cache only): "auto" (the lean step where it fits: Llama, Mistral,
        Qwen2/3, Phi-3 on CPU, and on CUDA unless $QUANTLLM_CUDA_LEAN=0; no hooks on the model), "lean" (insist) or "transformers" (the model's
        own modules); None reads $QUANTLLM_DECODE_STEP, default "auto". ``n_threads``: CPU threads of
        each forward pass (None: the physical cores), set around the pass only."""
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be a positive integer; got {max_batch_size!r}")
        if kv_cache not in ("auto", "static", "dynamic"):
            raise ConfigError(f"kv_cache must be 'auto', 'static' or 'dynamic'; got {kv_cache!r}")
        decode_step = decode_step or os.environ.get(DECODE_STEP_ENV, "").strip().lower() or "auto"
        if decode_step not in DECODE_STEPS:
            raise ConfigError(f"decode_step (or ${DECODE_STEP_ENV}) must be one of {', '.join(DECODE_STEPS)}; "
                              f"got {decode_step!r}")
        self.decode_step = decode_step
        self.n_threads = check_threads(n_threads) or physical_cores()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch_size = max_batch_size
        self.chat_template = chat_template
        config = model.config
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        self.eos_ids = eos_ids(model, tokenizer)
        self.pad_id = first_not_none(tokenizer.pad_token_id, getattr(config, "pad_token_id", None),
                                      *sorted(self.eos_ids), 0)
        accepted = inspect.signature(model.forward).parameters
        self._pass_positions = not self.is_encoder_decoder and "position_ids" in accepted
        # transformers 5 renamed past_key_values to cache; older models still take the old name
        self._cache_arg = "cache" if "cache" in accepted else "past_key_values"
        # only the last position's logits are needed (saves a [prompt, vocab] matmul at prefill)
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        if kv_cache == "auto":
            static_ok = not self.is_encoder_decoder and getattr(model, "_can_compile_fullgraph", False)
            kv_cache = "static" if static_ok else "dynamic"
        if kv_cache == "static" and self.is_encoder_decoder:
            raise ConfigError("kv_cache='static' is for decoder-only models; use 'dynamic' or 'auto'")
        if decode_step == "lean" and kv_cache == "dynamic":
            raise ConfigError("decode_step='lean' runs over a static cache; use kv_cache='static' or 'auto'")
        self.kv_cache = kv_cache
        self._forward_lock = forward_lock_of(model)  # one forward pass of this model at a time
        self._leader_lock = threading.Lock()  # one batch being formed and run at a time
        self._queue_lock = threading.Lock()
        self._pending: list[_Request] = []

    # ---- public API ---------------------------------------------------------------
    @property
    def context_window(self) -> int:
        """Most tokens (prompt + completion) the model takes."""
        cfg = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        return int(tok_max) if isinstance(tok_max, int) and 0 < tok_max < 1_000_000 else 2048

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template or getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    chat_template: str | None = None, tools: list[dict] | None = None) -> str:
        """Messages ``[{"role": ..., "content": ...}]`` -> prompt text, through ``chat_template`` when given
        (one caller's own, so wrappers sharing this engine need not agree), else the engine's or tokenizer's.
        ``tools`` (OpenAI-style tool dicts) go to the template, which may or may not render them."""
        chat_template = chat_template or self.chat_template
        if not (chat_template or self.has_chat_template):
            raise ConfigError(f"{type(self.tokenizer).__name__} of this model has no chat template; "
                              "pass chat_template='<jinja template>' (e.g. copied from a chat model's "
                              "tokenizer_config.json) or use plain-text generation instead")
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise TypeError("messages must be a list of dicts with 'role' and 'content'")
        extra = {"tools": tools} if tools else {}
        return self.tokenizer.apply_chat_template(messages, tokenize=False, chat_template=chat_template,
                                                  add_generation_prompt=add_generation_prompt, **extra)

    def template_renders_tools(self, chat_template: str | None = None) -> bool:
        """Whether the chat template shows ``tools=`` to the model (a probe tool's name appears in the prompt)."""
        probe = "quantllm_probe_tool_7f3a"
        tool = {"type": "function", "function": {"name": probe, "description": "probe",
                                                 "parameters": {"type": "object", "properties": {}}}}
        try:
            text = self.render_chat([{"role": "user", "content": "hi"}], chat_template=chat_template, tools=[tool])
        except Exception:  # a template that cannot take tools at all (jinja errors vary): it does not render them
            return False
        return probe in text

    def generate(self, prompts: list[str], params: GenerationParams | None = None,
                 constraints: Constraint | list[Constraint | None] | None = None) -> list[GenerationOutput]:
        """One output per prompt, in order. Batches of up to ``max_batch_size`` run together.
        ``constraints``: one Constraint for every prompt, or one (or None) per prompt."""
        params, encoded = self._prepare(prompts, params)
        request = _Request(encoded, params, self._check_constraints(constraints, len(prompts)))
        with self._queue_lock:
            self._pending.append(request)
        with self._leader_lock:
            if not request.done:  # nobody took us into their batch: run ours (and theirs)
                self._run_group(self._take_group(request))
        if request.error is not None:
            raise request.error
        return request.outputs

    def stream(self, prompt: str, params: GenerationParams | None = None,
               constraint: Constraint | None = None) -> Iterator[str]:
        """Text deltas of one prompt's completion as they are decoded (stop strings never leak)."""
        for delta, _ in self.stream_with_output(prompt, params, constraint):
            if delta:
                yield delta

    def stream_with_output(self, prompt: str, params: GenerationParams | None = None,
                           constraint: Constraint | None = None) -> Iterator[tuple[str, GenerationOutput | None]]:
        """Like ``stream``, as ``(delta, None)`` pairs, then ``("", output)`` with the finish reason and
        token counts once the completion is done (for wrappers that report usage)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, not {type(prompt).__name__}")
        params, encoded = self._prepare([prompt], params)
        constraints = self._check_constraints(constraint, 1)
        sent, rows = "", None
        for rows in self._decode(encoded, params, constraints):
            text = rows[0].streamable_text()
            if text.startswith(sent) and len(text) > len(sent):
                yield text[len(sent):], None
                sent = text
        yield "", rows[0].output()

    def prompt_tokens(self, prompt: str) -> int:
        """How many tokens ``prompt`` is as the engine feeds it (with a BOS when the tokenizer adds one)."""
        return len(self._encode(prompt))

    @classmethod
    def for_model(cls, model, tokenizer, *, max_batch_size: int = 8, n_threads: int | None = None
                  ) -> "GenerationEngine":
        """The one engine of ``model`` (created on first use), so that every wrapper of the same
        model shares its forward lock and micro-batching queue. ``n_threads`` (when given) becomes
        the engine's: one setting per model, the last wrapper to give one wins."""
        check_threads(n_threads)
        with _REGISTRY_LOCK:  # two threads asking at once still get one engine
            engine = _ENGINES.get(model)
            if engine is None or engine.tokenizer is not tokenizer:
                engine = cls(model, tokenizer, max_batch_size=max_batch_size)
                _ENGINES[model] = engine
            engine.max_batch_size = max(engine.max_batch_size, max_batch_size)
            engine.n_threads = n_threads or engine.n_threads
            return engine

    # ---- internals -----------------------------------------------------------------
    def _prepare(self, prompts, params) -> tuple[GenerationParams, list[list[int]]]:
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise TypeError(f"prompts must be a list of strings, not {type(prompts).__name__}")
        if not prompts:
            raise ConfigError("prompts is empty: pass at least one prompt")
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("every prompt must be a string")
        params = (params or GenerationParams()).validate()
        encoded = [self._encode(p) for p in prompts]
        if not self.is_encoder_decoder:
            longest = max(len(e) for e in encoded)
            if longest >= self.context_window:
                raise ConfigError(f"a prompt has {longest} tokens but the model's context window is "
                                  f"{self.context_window}: shorten the prompt")
        return params, encoded

    def _check_constraints(self, constraints, count: int) -> list[Constraint | None]:
        """One Constraint or None per prompt, each compiled now (cached), so a bad one fails before any work."""
        if constraints is None or isinstance(constraints, Constraint):
            constraints = [constraints] * count
        if not isinstance(constraints, (list, tuple)) or len(constraints) != count:
            raise ConfigError(f"constraints must be one Constraint or a list of {count} "
                              f"(one per prompt, None for none)")
        for c in constraints:
            if c is not None and not isinstance(c, Constraint):
                raise TypeError(f"constraints must be quant_core.constrained.Constraint objects, "
                                f"not {type(c).__name__}")
        for c in dict.fromkeys(c for c in constraints if c is not None):
            self._grammars().matcher(c)
        return list(constraints)

    def _grammars(self):
        """This engine's tokenizer compiled for constrained decoding (once per tokenizer, then cached)."""
        eos = self.tokenizer.eos_token_id
        return grammars_for(self.tokenizer, logits_width(self.model, self.tokenizer),
                            eos if eos in self.eos_ids else min(self.eos_ids, default=eos))

    def _encode(self, prompt: str) -> list[int]:
        bos = self.tokenizer.bos_token
        # A rendered chat template already starts with BOS: do not add a second one.
        add_special = not (bos and prompt.startswith(bos))
        ids = self.tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
        if not ids:  # an empty prompt still needs one token to condition on
            ids = [first_not_none(self.tokenizer.bos_token_id, *sorted(self.eos_ids), self.pad_id)]
        return list(ids)

    def _take_group(self, request: _Request) -> list[_Request]:
        with self._queue_lock:
            group, size = [request], len(request.encoded)
            if request.params.batchable_with_others:
                for other in self._pending:
                    if (other is not request and other.params == request.params
                            and size + len(other.encoded) <= self.max_batch_size):
                        group.append(other)
                        size += len(other.encoded)
            for r in group:
                self._pending.remove(r)
        return group

    def _run_group(self, group: list[_Request]) -> None:
        try:
            encoded = [e for r in group for e in r.encoded]
            constraints = [c for r in group for c in r.constraints]
            outputs = []
            for start in range(0, len(encoded), self.max_batch_size):
                rows, end = None, start + self.max_batch_size
                for rows in self._decode(encoded[start:end], group[0].params, constraints[start:end]):
                    pass
                outputs.extend(row.output() for row in rows)
            for r in group:
                r.outputs, outputs = outputs[:len(r.encoded)], outputs[len(r.encoded):]
        except BaseException as exc:  # every waiting caller must hear about it
            for r in group:
                r.error = exc
            raise
        finally:
            for r in group:
                r.done = True

    def _decode(self, encoded: list[list[int]], params: GenerationParams,
                constraints: list[Constraint | None]) -> Iterator[list[Row]]:
        """Run one batch; yields the rows after every step (one forward pass per step)."""
        device = device_of(self.model)
        window = None if self.is_encoder_decoder else self.context_window
        rows = [Row(self.tokenizer, params.stop, len(ids),
                    params.max_new_tokens if window is None else min(params.max_new_tokens, window - len(ids)))
                for ids in encoded]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
        generator = None
        if params.seed is not None and params.temperature > 0:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        # built under the lock: the lean step prepares the model's kernels, which a running pass reads
        with self._forward_lock, torch_threads(self.n_threads), torch.no_grad():
            stepper = self._stepper(input_ids, mask, width + max(r.budget for r in rows))
            logits = stepper.first()
        history = stepper.history
        history_mask = torch.ones_like(history) if self.is_encoder_decoder else mask
        masks = self._batch_mask(constraints)
        while True:
            before = [row.finished for row in rows]
            with torch.no_grad():
                if masks is not None:
                    logits = masks.apply(logits, before)
                tokens = choose_next_tokens(logits, history, history_mask, params, generator)
            picked = tokens.tolist()
            if masks is not None:
                masks.advance(picked, before)
            finished = []
            for row, token in zip(rows, picked):
                if not row.finished:
                    row.add(token, token in self.eos_ids or token in params.stop_token_ids)
                finished.append(row.finished)
            yield rows
            if all(finished):
                return
            done = torch.tensor(finished, device=device)
            tokens = torch.where(done, torch.full_like(tokens, self.pad_id), tokens)[:, None]
            history = torch.cat([history, tokens], 1)
            history_mask = torch.cat([history_mask, (~done).long()[:, None]], 1)
            with self._forward_lock, torch_threads(self.n_threads), torch.no_grad():
                logits = stepper.next(tokens)

    def _batch_mask(self, constraints: list[Constraint | None]) -> BatchMask | None:
        if not any(constraints):
            return None
        grammars = self._grammars()
        matchers = [None if c is None else grammars.matcher(c) for c in constraints]
        return BatchMask(matchers, grammars.vocab_size, grammars.eos_id)

    def _stepper(self, input_ids, mask, max_len: int):
        if self.is_encoder_decoder:
            return Seq2SeqStepper(self.model, input_ids, mask, self._cache_arg)
        if self.kv_cache == "static":
            return StaticStepper(self.model, input_ids, mask, max_len, DECODE_STEPS[self.decode_step])
        return DynamicStepper(self.model, input_ids, mask, self._cache_arg, self._extra, self._pass_positions)

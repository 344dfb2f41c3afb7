"""Response wrappers and small adapters for QuantLlamaLLM: engine outputs -> LlamaIndex
responses (token usage where LlamaIndex's TokenCountingHandler reads it), sync -> async
generators, and callback events for batch calls."""
from __future__ import annotations

import asyncio

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, MessageRole
from llama_index.core.callbacks import CBEventType

from quant_core.engine import GenerationOutput


def usage_of(out: GenerationOutput, cut: int) -> dict:
    """Token counts and finish reason, plus how many prompt tokens were cut to fit (when any)."""
    usage = {**out.usage(), "finish_reason": out.finish_reason}
    if cut:
        usage["truncated_prompt_tokens"] = cut
    return usage


def completion_response(out: GenerationOutput, cut: int) -> CompletionResponse:
    usage = usage_of(out, cut)
    return CompletionResponse(text=out.text, raw={"usage": usage}, additional_kwargs=usage)


def to_chat(r: CompletionResponse) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=r.text),
                        delta=r.delta, raw=r.raw, additional_kwargs=r.additional_kwargs)


async def in_thread(gen):
    """A sync generator as an async one; each step runs in a worker thread."""
    done = object()
    while (item := await asyncio.to_thread(next, gen, done)) is not done:
        yield item


class llm_events:
    """LLM start/end callback events for each item of a batch call."""

    def __init__(self, llm, payloads: list[dict]):
        self.manager, self.payloads = llm.callback_manager, payloads

    def __enter__(self):
        self.ids = [self.manager.on_event_start(CBEventType.LLM, payload=p) for p in self.payloads]
        return self.finish

    def finish(self, payloads: list[dict]) -> None:
        for event_id, payload in zip(self.ids, payloads):
            self.manager.on_event_end(CBEventType.LLM, payload=payload, event_id=event_id)

    def __exit__(self, *exc):
        return False

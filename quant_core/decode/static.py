"""Low-overhead decoding for causal LMs: a static KV cache, and a compiled or graph-replayed step.

On small models the per-token Python work (cache concatenation, mask building, module
calls) rivals the matmuls, hiding what fast kernels gain. ``StaticDecoder`` keeps K/V in
buffers allocated once (``transformers.StaticCache``), so a step writes in place instead
of growing tensors, and can ``torch.compile`` the one-token step (``compile_step=True``).
On CUDA the step is captured once in a CUDA graph and replayed (``cuda_graph``, on by
default there): one launch per token instead of one per kernel, which is what lets the
quantized kernels' speed show (each eager launch costs tens of microseconds of Python).

For the generation engine (quant_core/engine.py)::

    dec = StaticDecoder(model, batch_size=B, max_len=prompt_len + max_new)
    logits = dec.prefill(input_ids, attention_mask)   # [B, vocab] at the last position
    while ...:
        logits = dec.step(next_ids)                   # next_ids: [B] LongTensor
    dec.reset()                                       # reuse the buffers for another batch
"""
from __future__ import annotations

import torch
from transformers import StaticCache

from ..fused_projections import fuse_projections, fusion_wanted
from .prompt_check import check_prompt


class StaticDecoder:
    """Prefill then one token per step over a preallocated KV cache of ``max_len`` positions.

    Left-padded batches work: pass the prompt's 2-D ``attention_mask``; positions follow
    the mask (a padded row's first real token is position 0).
    """

    def __init__(self, model, batch_size: int, max_len: int, compile_step: bool = False,
                 cuda_graph: bool | None = None):
        if max_len <= 0 or batch_size <= 0:
            raise ValueError(f"batch_size and max_len must be positive, got {batch_size}, {max_len}")
        self.model, self.batch_size, self.max_len = model, batch_size, max_len
        self.device = next(model.parameters()).device
        if fusion_wanted(self.device.type) and not compile_step:  # q/k/v, gate/up one launch each (the
            fuse_projections(model)  # weights stay as they are; a compiled step would trace the group's Python)
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.compiled = compile_step
        self._step_fn = torch.compile(self._forward, dynamic=False) if compile_step else self._forward
        # a compiled step is the CPU's answer to launch overhead; on CUDA the graph is
        self.graphed = (_graph_ok(model) and not compile_step) if cuda_graph is None else cuda_graph
        if self.graphed and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the model on a CUDA device, not {self.device}")
        self._graph = None
        if self.graphed:  # the step's inputs live in these buffers, updated inside the graph
            self._ids = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
            self._mask4 = torch.zeros(batch_size, 1, 1, max_len, dtype=torch.bool, device=self.device)
            self._gpos = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
            self._cpos = torch.zeros(1, dtype=torch.long, device=self.device)
        self.reset()

    def reset(self) -> None:
        self.cache.reset()
        self.length = 0
        self.mask = None
        self.next_pos = None

    def _forward(self, ids, mask, position_ids, cache_position):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, cache=self.cache,
                         cache_position=cache_position, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_prompt(input_ids.shape, self.batch_size, self.max_len)
        b, t = input_ids.shape
        self.reset()
        mask = torch.ones(b, t, dtype=torch.long, device=self.device) if attention_mask is None \
            else attention_mask.to(self.device, torch.long)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        self.mask = torch.zeros(b, self.max_len, dtype=torch.long, device=self.device)
        self.mask[:, :t] = mask
        self.next_pos = positions[:, -1:] + 1
        self.length = t
        if self.graphed:
            self._mask4.copy_(self.mask.bool()[:, None, None, :])
            self._gpos.copy_(self.next_pos)
            self._cpos.fill_(t)
        # Prefill runs eagerly: its shape changes with every prompt, the step's never does.
        return self._forward(input_ids.to(self.device), self.mask[:, :t], positions,
                             torch.arange(t, device=self.device))

    @torch.inference_mode()
    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        if self.length >= self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions and is full; raise max_len")
        if self.mask is None:
            raise RuntimeError("call prefill() before step()")
        pos = self.length
        if self.graphed:  # mask and positions move inside the graph (_graph_body)
            self._ids.copy_(next_ids.reshape(-1, 1))
            if self._graph is None:
                self._graph = self._capture()
            self._graph.replay()
            logits = self._graph_logits.clone()  # the graph's output buffer is rewritten next step
        else:
            self.mask[:, pos] = 1
            logits = self._step_fn(next_ids.reshape(-1, 1).to(self.device), self.mask[:, : pos + 1],
                                   self.next_pos, torch.tensor([pos], device=self.device))
            self.next_pos = self.next_pos + 1
        self.length += 1
        return logits

    def _graph_body(self) -> torch.Tensor:
        """One step on the graph's buffers: the new position becomes visible, then counters move on."""
        self._mask4.index_fill_(3, self._cpos, True)
        logits = self._forward(self._ids, self._mask4, self._gpos, self._cpos)
        self._gpos.add_(1)
        self._cpos.add_(1)
        return logits

    def _counters(self) -> list[torch.Tensor]:
        """Every position counter a step moves in place: ours, and the cache layers' own
        (transformers >= 5 counts written positions in a tensor per layer)."""
        layers = getattr(self.cache, "layers", [])
        return [self._gpos, self._cpos] + [layer.cumulative_length for layer in layers
                                           if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor)]

    def _capture(self) -> "torch.cuda.CUDAGraph":
        # Warm-up steps run the real step (kernels compile and tune, cuBLAS sets up) and write
        # the same K/V the replay writes; only the counters must be put back.
        counters = self._counters()
        saved = [c.clone() for c in counters]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._graph_body()
                for counter, value in zip(counters, saved):
                    counter.copy_(value)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._graph_logits = self._graph_body()
        return graph


def _graph_ok(model) -> bool:
    """Graph the step on CUDA unless the model has a sliding window: the graph passes a ready-made
    4-D mask, which transformers uses as is, and sliding cache layers keep host-side counters
    that a graph would freeze."""
    device = next(model.parameters()).device
    return device.type == "cuda" and not getattr(model.config, "sliding_window", None)

"""Per-token time split of batch-1 decode: matmuls / attention / everything else (issue 15).

Used by cpu_speed.py's "split" child. For transformers' modules (StaticDecoder) the matmuls are
the QuantLinear / nn.Linear calls and attention the SDPA calls, timed by wrapping them; for the
lean step the C++ layer call times its own parts (lean_plan.LayerStep.seconds) and the output
head is a wrapped Projection. "Rest" is the step's wall time minus both (norms, rotary, cache
writes, embedding, Python). Timers are wall clock (time.perf_counter).
"""
from __future__ import annotations

import contextlib
import statistics
import time

import torch


@contextlib.contextmanager
def _wrapped(owner, name: str, acc: dict, key: str):
    """Time every call of ``owner.name`` into ``acc[key]`` (outermost calls only)."""
    original = getattr(owner, name)
    depth = [0]

    def timed(*args, **kwargs):
        depth[0] += 1
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                acc[key] += time.perf_counter() - t

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _hooks(dec, acc: dict):
    """Context managers timing the decoder's matmuls and attention into ``acc``."""
    import transformers.integrations.sdpa_attention as sdpa_mod

    from quant_core.decode import LeanDecoder
    from quant_core.decode.lean_ops import CppOps, TorchOps
    from quant_core.decode.projection import Projection
    from quant_core.modules import QuantLinear

    if isinstance(dec, LeanDecoder):
        return [_wrapped(Projection, "__call__", acc, "matmul"), _wrapped(CppOps, "attend", acc, "attention"),
                _wrapped(TorchOps, "attend", acc, "attention")]
    return [_wrapped(QuantLinear, "forward", acc, "matmul"), _wrapped(torch.nn.Linear, "forward", acc, "matmul"),
            _wrapped(sdpa_mod.torch.nn.functional, "scaled_dot_product_attention", acc, "attention")]


def decode_split(model, prompt: torch.Tensor, steps: int, repeats: int, lean: bool | None) -> dict:
    """Median per-token ms {"total", "matmul", "attention", "rest"} over ``repeats`` runs of ``steps``."""
    from quant_core.decode import make_decoder

    dec = make_decoder(model, 1, prompt.shape[1] + steps + 1, lean=lean)
    dec.prefill(prompt)
    dec.step(torch.tensor([5]))  # builds the one-call plan outside the timed steps
    runs = []
    for _ in range(repeats):
        acc = {"matmul": 0.0, "attention": 0.0}
        dec.prefill(prompt)
        c_seconds = torch.zeros(3, dtype=torch.float64)
        if getattr(dec, "layer_step", None) is not None:
            dec.layer_step.seconds = c_seconds
        with contextlib.ExitStack() as stack:
            for hook in _hooks(dec, acc):
                stack.enter_context(hook)
            tokens = torch.tensor([5])
            t = time.perf_counter()
            for _ in range(steps):
                tokens = dec.step(tokens).argmax(-1)
            total = time.perf_counter() - t
        if getattr(dec, "layer_step", None) is not None:
            dec.layer_step.seconds = None
        matmul = acc["matmul"] + float(c_seconds[0])
        attention = acc["attention"] + float(c_seconds[1])
        runs.append({"total": total, "matmul": matmul, "attention": attention, "rest": total - matmul - attention})
    return {key: statistics.median(r[key] for r in runs) / steps * 1e3 for key in runs[0]} | {
        "decoder": type(dec).__name__}

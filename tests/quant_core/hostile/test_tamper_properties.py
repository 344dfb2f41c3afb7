"""Property-based tampering (issue 17, part 5): whatever bytes or config fields of a saved
checkpoint or an export are changed, loading either refuses with a QuantllmError or gives
exactly the original logits; never a silent difference, never another exception.

Runs are derandomized (the same examples every run, so CI does not flake) and small: tiny
models, one saved checkpoint per session, copies per example."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant_core.errors import QuantllmError
from quant_core.interop import export_awq, export_gptq
from quant_core.loading import load_model
from quant_core.serialization import load_quantized

from hostile_helpers import logits_of

SETTINGS = settings(max_examples=30, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 600), st.integers(-2 ** 40, 2 ** 40),
                        st.floats(allow_nan=False, width=32), st.text(max_size=6),
                        st.sampled_from(["gptq", "gptq_v2", "awq", "gemm", "quantllm", "int8", "nf4", "fp32"]),
                        st.just([]), st.just({}))


def refused_or_identical(load, ref) -> str:
    """Load; a QuantllmError is a clean refusal, any other exception fails the test, and a
    model that loads must reproduce ``ref`` exactly."""
    try:
        model = load()
    except QuantllmError:
        return "refused"
    assert torch.equal(logits_of(model), ref), "tampered checkpoint loaded silently with different logits"
    return "identical"


def flip_byte(path: Path, data, limit: int | None = None) -> None:
    """XOR one byte (chosen by hypothesis) of ``path``, within its first ``limit`` bytes."""
    raw = bytearray(path.read_bytes())
    at = data.draw(st.integers(0, min(len(raw), limit or len(raw)) - 1), label="offset")
    raw[at] ^= data.draw(st.integers(1, 255), label="xor")
    path.write_bytes(bytes(raw))


def leaf_paths(node, prefix=()):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaf_paths(v, prefix + (k,))
    else:
        yield prefix


def set_field(config: dict, path: tuple, value) -> None:
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def tamper_field(folder: Path, data, under: tuple = ()) -> None:
    """Give one leaf of config.json (below ``under``) a value drawn by hypothesis."""
    config = json.loads((folder / "config.json").read_text())
    node = config
    for key in under:
        node = node[key]
    leaf = data.draw(st.sampled_from(sorted(leaf_paths(node))), label="field")
    set_field(config, under + leaf, data.draw(JSON_VALUES, label="value"))
    (folder / "config.json").write_text(json.dumps(config))


def header_length(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _copy(src: Path, tmp: str) -> Path:
    return Path(shutil.copytree(src, Path(tmp) / src.name))


@SETTINGS
@given(data=st.data())
def test_any_byte_of_a_quantllm_checkpoint(saved_ckpt, data):
    src, ref = saved_ckpt
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(src, tmp)
        name = data.draw(st.sampled_from(sorted(p.name for p in folder.iterdir())), label="file")
        flip_byte(folder / name, data)
        refused_or_identical(lambda: load_model(folder)[0], ref)


@SETTINGS
@given(data=st.data())
def test_any_field_of_a_quantllm_config(saved_ckpt, data):
    src, ref = saved_ckpt
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(src, tmp)
        tamper_field(folder, data)
        refused_or_identical(lambda: load_model(folder)[0], ref)


@SETTINGS
@given(data=st.data())
def test_header_bytes_without_checksums(saved_ckpt, data):
    """verify=False skips the checksums; the structural checks alone must still catch any
    change to the weights file's header (names, dtypes, shapes, offsets, aliases)."""
    src, ref = saved_ckpt
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(src, tmp)
        weights = folder / "model.safetensors"
        flip_byte(weights, data, limit=header_length(weights))
        refused_or_identical(lambda: load_quantized(folder, verify=False)[0], ref)


@pytest.fixture(scope="module")
def exports(saved_ckpt, tmp_path_factory):
    """GPTQ (v2: the asym model has zero points of 0) and AWQ exports of the saved model."""
    model = load_quantized(saved_ckpt[0])[0]
    root = tmp_path_factory.mktemp("exports")
    return {"gptq": export_gptq(model, None, root / "gptq", "gptq_v2"), "awq": export_awq(model, None, root / "awq")}


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(["gptq", "awq"]))
def test_export_quantization_fields_and_headers(saved_ckpt, exports, data, kind):
    """Imported formats carry no checksums: every quantization setting and every header byte
    must still be checked against the tensors (their float data cannot be)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(exports[kind], tmp)
        if data.draw(st.booleans(), label="field or header"):
            tamper_field(folder, data, under=("quantization_config",))
        else:
            weights = folder / "model.safetensors"
            flip_byte(weights, data, limit=header_length(weights))
        refused_or_identical(lambda: load_model(folder)[0], saved_ckpt[1])

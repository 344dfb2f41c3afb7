"""Structural checks of the two binary headers we read from files users hand us: safetensors
and GGUF. Each check reads only the header (never tensor data), bounds every length and
count by the bytes that exist, and raises ``CheckpointError`` with one clear message for
anything malformed, so a truncated or tampered file never reaches a library that would fail
with ``struct.error``, ``SafetensorError`` or an allocation of a length read from the file.

``tests/fuzz/fuzz_headers.py`` fuzzes both parsers: any input must give a result or a
``CheckpointError``, nothing else.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import CheckpointError

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
                           "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise CheckpointError("a name appears twice in the header")
    return dict(pairs)


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def parse_safetensors_header(header: bytes, data_size: int) -> tuple[dict[str, tuple[str, tuple]], dict[str, str]]:
    """The JSON header of a safetensors file (without its 8-byte length) and the size of the data
    after it -> ({name: (dtype, shape)}, metadata). Every tensor must lie inside the data, with
    the byte count its dtype and shape need, and the tensors must tile the data without overlap."""
    try:
        parsed = json.loads(header.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise CheckpointError("the safetensors header is not a JSON object")
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("the safetensors __metadata__ is not a map of strings")
    tensors, spans = {}, []
    for name, entry in parsed.items():
        tensors[name] = _tensor_entry(name, entry, data_size)
        spans.append((entry["data_offsets"][0], entry["data_offsets"][1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise CheckpointError(f"tensor {name!r} starts at byte {begin} of the data, expected {end} "
                                  f"(tensors overlap or leave a gap)")
        end = stop
    if end != data_size:
        raise CheckpointError(f"the tensors cover {end} bytes but the file holds {data_size} after the header")
    return tensors, metadata


def _tensor_entry(name: str, entry, data_size: int) -> tuple[str, tuple]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"tensor {name!r} has a malformed header entry")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in SAFETENSORS_DTYPE_BYTES:
        raise CheckpointError(f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CheckpointError(f"tensor {name!r} has a malformed shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1] <= data_size):
        raise CheckpointError(f"tensor {name!r} has offsets {offsets!r} outside the {data_size} data bytes")
    count = 1
    for d in shape:
        count *= d
    if count * SAFETENSORS_DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        raise CheckpointError(f"tensor {name!r} ({dtype} {shape}) needs {count * SAFETENSORS_DTYPE_BYTES[dtype]} "
                              f"bytes but its offsets span {offsets[1] - offsets[0]}")
    return dtype, tuple(shape)


def read_safetensors_header(path) -> tuple[dict[str, tuple[str, tuple]], dict[str, str]]:
    """``parse_safetensors_header`` of a file: the file is truncated, corrupt or not safetensors
    -> CheckpointError naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError("it is shorter than a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(size - 8, MAX_SAFETENSORS_HEADER):
                raise CheckpointError(f"its header claims {length} bytes but the file has {size - 8}")
            return parse_safetensors_header(f.read(length), size - 8 - length)
    except CheckpointError as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}; it is truncated, corrupt "
                              f"or was modified: re-create or re-download it") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


# ---------------------------------------------------------------- GGUF
GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS


class _Cursor:
    """Bounds-checked little-endian reads from a bytes-like object."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CheckpointError(f"the header is truncated (needs {n} bytes at offset {self.pos}, "
                                  f"the file has {len(self.data)})")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.unpack("<Q"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"a string before offset {self.pos} is not UTF-8") from None

    def value(self, vtype: int, depth: int = 0):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY and depth == 0:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _SCALARS:  # skip without building a list of perhaps millions of numbers
                self.take(count * struct.calcsize(_SCALARS[item]))
                return count
            if count > len(self.data) - self.pos:  # every element takes at least one byte
                raise CheckpointError(f"an array claims {count} elements, more than the file holds")
            return [self.value(item, depth + 1) for _ in range(count)]
        raise CheckpointError(f"unknown GGUF value type {vtype} at offset {self.pos}")


def parse_gguf_header(data) -> dict:
    """The header of a whole GGUF file (bytes or a memory map) -> {"version", "metadata" (arrays
    as element counts or lists), "tensors": {name: (type name, dims)}}. Every tensor must lie
    inside the file with the byte count its type and dims need."""
    cur = _Cursor(data)
    if cur.take(4) != GGUF_MAGIC:
        raise CheckpointError("it does not start with the GGUF magic bytes")
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise CheckpointError(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    if n_tensors > len(data) or n_kv > len(data):
        raise CheckpointError(f"the header claims {n_tensors} tensors and {n_kv} fields, more than the file holds")
    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("<I"))
    infos = [_tensor_info(cur) for _ in range(n_tensors)]
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise CheckpointError(f"general.alignment {alignment!r} is not a power of two")
    start = -(-cur.pos // alignment) * alignment
    tensors = {}
    for name, dims, kind, offset in infos:
        if name in tensors:
            raise CheckpointError(f"tensor {name!r} appears twice")
        block, type_size = GGML_QUANT_SIZES[kind]
        if dims[0] % block:
            raise CheckpointError(f"tensor {name!r} has {dims[0]} columns, not whole {kind.name} blocks of {block}")
        count = 1
        for d in dims:
            count *= d
        nbytes = count // block * type_size
        if offset % alignment or start + offset + nbytes > len(data):
            raise CheckpointError(f"tensor {name!r} ({nbytes} bytes at data offset {offset}) lies outside "
                                  f"the file or is misaligned: the file is truncated or corrupt")
        tensors[name] = (kind.name, dims)
    return {"version": version, "metadata": metadata, "tensors": tensors}


def _tensor_info(cur: _Cursor):
    name = cur.string()
    n_dims = cur.unpack("<I")
    if not 1 <= n_dims <= MAX_DIMS:
        raise CheckpointError(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} exist)")
    dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
    raw_type = cur.unpack("<I")
    try:
        kind = GGMLQuantizationType(raw_type)
    except ValueError:
        raise CheckpointError(f"tensor {name!r} has unknown GGML type {raw_type}") from None
    if kind not in GGML_QUANT_SIZES:
        raise CheckpointError(f"tensor {name!r} has GGML type {kind.name}, which has no block size")
    return name, dims, kind, cur.unpack("<Q")


def read_gguf_header(path) -> dict:
    """``parse_gguf_header`` of a file, memory-mapped (the header is read, tensor data is not)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise CheckpointError("it is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return parse_gguf_header(mapped)
    except CheckpointError as exc:
        raise CheckpointError(f"{path} is not a readable GGUF file: {exc}; re-download or re-export it") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc

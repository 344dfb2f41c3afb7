"""Runs the atheris fuzz target of the header parsers briefly (tests/fuzz/fuzz_headers.py),
seeded with a real GGUF and safetensors file, and checks the parsers on those seeds."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from quant_core.file_headers import parse_gguf_header, parse_safetensors_header

TARGET = Path(__file__).parents[2] / "fuzz" / "fuzz_headers.py"
RUNS = 2000


def _gguf_seed(path: Path) -> bytes:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_token_list([b"a", b"bc"])
    writer.add_tensor("w", np.zeros((2, 32), dtype=np.float32))
    q = np.zeros((2, 18), dtype=np.uint8)
    writer.add_tensor("q", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _safetensors_seed(path: Path) -> bytes:
    save_file({"a": torch.zeros(3, 4, dtype=torch.float16), "b": torch.zeros(5, dtype=torch.uint8)}, str(path),
              metadata={"producer": "quantllm"})
    return path.read_bytes()


@pytest.fixture
def seeds(tmp_path):
    gguf_bytes, st_bytes = _gguf_seed(tmp_path / "s.gguf"), _safetensors_seed(tmp_path / "s.safetensors")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "gguf").write_bytes(b"\x01" + gguf_bytes)
    (corpus / "safetensors").write_bytes(b"\x00" + st_bytes)
    return corpus, gguf_bytes, st_bytes


def test_parsers_read_the_seeds(seeds):
    _, gguf_bytes, st_bytes = seeds
    header = parse_gguf_header(gguf_bytes)
    assert header["tensors"] == {"w": ("F32", (32, 2)), "q": ("Q4_0", (32, 2))}
    n = int.from_bytes(st_bytes[:8], "little")
    tensors, meta = parse_safetensors_header(st_bytes[8:8 + n], len(st_bytes) - 8 - n)
    assert tensors == {"a": ("F16", (3, 4)), "b": ("U8", (5,))} and meta["producer"] == "quantllm"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed (it ships wheels for CPython 3.8-3.11 on Linux only)")
def test_fuzz_target_runs_clean(seeds):
    corpus = seeds[0]
    env = {**os.environ, "PYTHONPATH": str(TARGET.parents[2]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(TARGET), str(corpus), f"-runs={RUNS}", "-max_len=4096", "-seed=1"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Done {RUNS} runs" in proc.stderr

"""The few-row kernel's machine code keeps programmatic dependent launch (PDL) correct: read off the SASS
that nvcc and cuobjdump make here, no GPU needed (skipped without them).

Session 7 found the few-row kernel's graph chains with PDL wrong on the H200 (int4 M=1). Its SASS showed
why: ptxas had hoisted a read-only (.nc) load of x above griddepcontrol.wait (ACQBULK in SASS), where the
previous kernel may still be writing x, and sunk the weight prefetch below it, where it overlaps nothing.
These tests fail on that code: before the wait only weight (16-byte) loads and the scales' cp.async may
run, and they must be there; x and every store come after it, and x never through the read-only path."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from quant_core.errors import BuildError
from quant_core.kernels import cuda_build

# (T, FMT, ZM, M16) instantiations: int4 and its zero modes, the codebook and int8 paths, both row tiles
KERNELS = [("__nv_bfloat16", "INT4", "ZNONE", "false"), ("half", "INT4", "ZINT", "true"),
           ("__nv_bfloat16", "INT4", "ZMIN", "false"), ("__nv_bfloat16", "CB4", "ZNONE", "true"),
           ("half", "INT8", "ZNONE", "false"),
           ("__nv_bfloat16", "INT4", "ZNONE", "false, 4"), ("half", "CB4", "ZNONE", "false, 4"),  # 4 blocks an SM
           ("__nv_bfloat16", "INT8", "ZINT", "false, 4")]
GLOBAL_LOAD = re.compile(r"\b(LDG\.[A-Z0-9.]+|LDGSTS\.[A-Z0-9.]+)")
WRITE = re.compile(r"\b(STG|RED|ATOM|ATOMG)\.")


def _tool(name: str) -> str | None:
    """cuobjdump from the PATH, beside nvcc, or the copy that Triton's package carries."""
    found = shutil.which(name)
    if not found:
        try:
            found = str(Path(cuda_build.nvcc()).resolve().parent / name)
        except BuildError:
            return None
    if Path(found).is_file():
        return found
    spec = importlib.util.find_spec("triton")
    carried = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / name if spec and spec.origin else None
    return str(carried) if carried and carried.is_file() else None


@pytest.fixture(scope="module")
def gemv_sass(tmp_path_factory) -> dict[str, list[str]]:
    """Each instantiated few-row kernel's SASS instructions, in order, built for sm_90a as the library is."""
    try:
        nvcc = cuda_build.nvcc()
    except BuildError as exc:
        pytest.skip(f"no nvcc: {exc}")
    cuobjdump = _tool("cuobjdump")
    if cuobjdump is None:
        pytest.skip("no cuobjdump (CUDA toolkit or Triton's package) to read the SASS")
    tmp = tmp_path_factory.mktemp("sass")
    src = tmp / "gemv.cu"
    lines = ["#define QMM_CLUSTERS 1", '#include "cuda_gemv.cuh"']
    lines += [f"template __global__ void qmm::gemv_kernel<{t}, qmm::{f}, qmm::{z}, {m}>(const qmm::Args);"
              for t, f, z, m in KERNELS]
    src.write_text("\n".join(lines) + "\n")
    cubin = tmp / "gemv.cubin"
    cmd = [nvcc, "-O3", "-std=c++17", *cuda_build.arch_flags("90")[:1], f"-I{cuda_build.CSRC}", "-cubin", str(src),
           "-o", str(cubin)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    sass = subprocess.run([cuobjdump, "--dump-sass", str(cubin)], check=True, capture_output=True, text=True).stdout
    kernels = {}
    for part in re.split(r"\n\s*Function : ", sass)[1:]:
        name, body = part.split("\n", 1)
        kernels[name.strip()] = [ln.split("*/", 1)[1].split(";")[0].strip() for ln in body.splitlines()
                                 if re.match(r"\s*/\*[0-9a-f]{4}\*/", ln)]
    assert len(kernels) == len(KERNELS), sorted(kernels)
    return kernels


def _split_at_wait(instructions: list[str]) -> tuple[list[str], list[str]]:
    waits = [i for i, ins in enumerate(instructions) if ins.startswith("ACQBULK")]
    assert waits, "no griddepcontrol.wait (ACQBULK) in the kernel"
    return instructions[:waits[0]], instructions[waits[0]:]


def test_only_the_weight_and_scales_load_before_the_wait(gemv_sass):
    for name, instructions in gemv_sass.items():
        before, _ = _split_at_wait(instructions)
        loads = [m.group(1) for ins in before if (m := GLOBAL_LOAD.search(ins))]
        weight = [ld for ld in loads if ld.startswith("LDG.") and ".128" in ld]
        assert weight, f"{name}: the first batch of weight loads sank below the wait (no overlap with PDL)"
        x_like = [ld for ld in loads if ld.startswith("LDG.") and ".128" not in ld]
        assert not x_like, f"{name}: {x_like} before the wait (x may still be written by the previous kernel)"
        writes = [ins for ins in before if WRITE.search(ins)]
        assert not writes, f"{name}: {writes} before the wait (output or split-K workspace)"


def test_x_never_goes_through_the_read_only_path(gemv_sass):
    for name, instructions in gemv_sass.items():
        narrow_nc = [ins for ins in instructions if (m := GLOBAL_LOAD.search(ins)) and ".CONSTANT" in m.group(1)
                     and ".128" not in m.group(1)]
        assert not narrow_nc, f"{name}: x loaded through the read-only path: {narrow_nc[:2]}"

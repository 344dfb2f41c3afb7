"""CI's CUDA compile check compiles a pairwise cover of the kernel variants: it must stay a cover."""
from itertools import combinations

import pytest

from quant_core.errors import BuildError
from quant_core.kernels import cuda_build
from quant_core.kernels import cuda_compile_check as check


def pairs(variants):
    return {(i, a, j, b) for v in variants for (i, a), (j, b) in combinations(enumerate(v), 2)}


def test_the_default_variants_cover_every_pair_of_settings_that_all_variants_hold():
    compiled = check.PAIRWISE + [v for v, _ in check.FULL]
    assert set(compiled) <= set(check.VARIANTS)
    assert pairs(check.VARIANTS) <= pairs(compiled)


def test_the_pairwise_jobs_are_fewer_and_all_reach_ptx_or_an_object(tmp_path):
    try:
        cuda_build.nvcc()
    except BuildError as exc:
        pytest.skip(f"the commands name nvcc: {exc}")
    jobs = check._jobs(str(tmp_path))
    assert len(jobs) == len(check.PAIRWISE) + len(check.FULL) < len(check.VARIANTS)
    assert all(("--ptx" in cmd) != ("-c" in cmd) for _, cmd in jobs)

"""CudaKernel: what it accepts and why it refuses (any machine, capability faked), its launch
configurations, and on a CUDA GPU its numbers against the reference kernel in every format."""
from __future__ import annotations

import ast
import json

import pytest
import torch

from quant_core.errors import BuildError
from quant_core.formats import get_format, pack_codes
from quant_core.kernels import cuda_build, cuda_kernel, registry
from quant_core.kernels.base import LayerSpec
from quant_core.kernels.cuda_kernel import TILES, CudaKernel, _tile_fits, candidates
from quant_core.kernels.reference import ReferenceKernel
from quant_core.packed import PackedWeight

HAS_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def spec(fmt="int4_fullrange", group=128, k=4096, n=4096, compute="bf16", device="cuda", zero_mode="none",
         g_idx=False) -> LayerSpec:
    f = get_format(fmt)
    return LayerSpec(f.name, f.bits, group, k, n, zero_mode == "none", g_idx, zero_mode, compute, device)


@pytest.fixture(autouse=True)
def no_user_switches(monkeypatch):
    """The kernel's switches, set in a user's environment, would change the candidates asserted here."""
    for switch in (cuda_kernel.WGMMA_ENV, cuda_kernel.GEMV_ENV, cuda_kernel.DENSE_CACHE_ENV, cuda_kernel.SHIPPED_ENV):
        monkeypatch.delenv(switch, raising=False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """An sm_90 device whose kernel libraries 'build' (records which variants were asked for)."""
    built = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(cuda_build, "load_library", lambda *v: built.append(v) or object())
    return built


def test_accepts_the_formats_it_decodes(fake_gpu):
    for s in (spec(), spec("nf4", 64), spec("fp4", 128, compute="fp16"), spec("int8", -1), spec("int4_clip", 32),
              spec(zero_mode="int"), spec(zero_mode="min"), spec(g_idx=True), spec(k=1088, n=320, group=64)):
        ok, why = CudaKernel.can_implement(s)
        assert ok, (s, why)
    assert (True, "cb4", "none", "90") in fake_gpu and (False, "cb4", "none", "90") in fake_gpu


@pytest.mark.parametrize("bad, reason", [
    (dict(device="cpu"), "CUDA devices"), (dict(compute="fp32"), "fp16 or bf16"), (dict(fmt="int3"), "no CUDA decoder"),
    (dict(fmt="int2"), "no CUDA decoder"), (dict(n=4000), "divisible by 64"), (dict(group=48), "power of two"),
    (dict(group=8), "power of two")])
def test_refuses_with_a_reason(fake_gpu, bad, reason):
    ok, why = CudaKernel.can_implement(spec(**bad))
    assert not ok and reason in why


def test_refuses_old_gpus_and_failed_builds(fake_gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert "8.0" in CudaKernel.can_implement(spec())[1]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))

    def no_nvcc(*v):
        raise cuda_build.BuildError("nvcc (the CUDA compiler) was not found: install the CUDA toolkit")
    monkeypatch.setattr(cuda_build, "load_library", no_nvcc)
    ok, why = CudaKernel.can_implement(spec())
    assert not ok and "nvcc" in why


def test_registry_tries_cuda_first_then_triton_then_reference():
    assert registry.PRIORITY["cuda"] == ["cuda", "triton", "reference"]
    assert registry.load_kernel_class("cuda") is CudaKernel


@pytest.mark.parametrize("m", [1, 16, 33, 64, 256])
@pytest.mark.parametrize("k, n, group", [(4096, 14336, 128), (14336, 4096, 32), (1088, 320, 64), (4096, 4096, 4096)])
def test_candidates_fit_the_shape_and_split_only_one_row_block(m, k, n, group):
    cands = candidates(m, n, k, group)
    assert cands, "a 64 x 64 tile fits every shape the kernel accepts"
    for c in cands:
        assert c.dequant or c.cluster or _tile_fits(c.tile, n, k, group)
        assert c.splits == 1 or m <= cuda_kernel.SPLIT_MAX_ROWS
    assert any(c.dequant for c in cands) == (m >= cuda_kernel.DEQUANT_MIN_ROWS)
    assert any(c.cluster for c in cands) == (m <= cuda_kernel.GEMV_MAX_ROWS)
    assert len({c.label() for c in cands}) == len(cands)


def test_few_row_kernel_leads_to_16_rows_with_one_wave_of_blocks(fake_gpu, monkeypatch):
    """Untuned (and while a graph is captured) the first candidate runs: for <= 16 rows the few-row
    kernel, its cluster the largest that keeps the blocks within one wave (3 a SM on 132 SMs)."""
    monkeypatch.setattr(cuda_kernel, "sm_count", lambda: 132)
    first = lambda m, n, k: candidates(m, n, k, 128)[0]  # noqa: E731
    assert first(1, 4096, 4096) == cuda_kernel.CudaConfig(0, cluster=4)  # 4 x 64 blocks <= 396 < 8 x 64
    assert first(16, 14336, 4096).cluster == 1 and first(8, 4096, 14336).cluster == 4
    assert not any(c.cluster for c in candidates(17, 4096, 4096, 128))
    assert {c.cluster for c in candidates(1, 4096, 4096, 128)} >= {1, 2, 4, 8}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))  # no clusters before sm_90
    assert {c.cluster for c in candidates(1, 4096, 4096, 128) if c.cluster} == {1}  # workspace splits stay


@pytest.mark.parametrize("k, n", [(4096, 4096), (14336, 4096), (4096, 14336), (4096, 128256), (512, 256)])
def test_few_row_splits_over_the_workspace_fill_one_wave_at_most(fake_gpu, monkeypatch, k, n):
    """Besides clusters, the few-row kernel may split K over blocks that meet in the split-K workspace:
    only where the column blocks alone leave SMs idle, never more blocks than one wave (3 a SM), and
    every warp keeps at least two 16-row bands."""
    monkeypatch.setattr(cuda_kernel, "sm_count", lambda: 132)
    for occupancy, per_sm in ((0, 3), (4, 4)):  # the two register budgets: 3 or 4 blocks an SM
        splits = [c for c in candidates(1, n, k, 128) if c.cluster == 1 and c.splits > 1 and c.occupancy == occupancy]
        assert bool(splits) == (2 * (n // 64) <= per_sm * 132)
        for c in splits:
            assert c.splits * (n // 64) <= per_sm * 132 and k // 16 >= 2 * cuda_kernel.GEMV_WARPS * c.splits
            assert c.label() == f"gemv:s{c.splits}" + (f"b{occupancy}" if occupancy else "")
        if k == 4096 and n == 4096:  # per_sm x 64 blocks: one wave; 2 x 64: two a SM
            assert {c.splits for c in splits} == {2 * per_sm, 4}


def test_the_small_register_budget_stops_at_8_rows(fake_gpu, monkeypatch):
    """The 4-blocks-an-SM build of the few-row kernel exists for x as one 8-row operand only."""
    monkeypatch.setattr(cuda_kernel, "sm_count", lambda: 132)
    assert {c.occupancy for c in candidates(8, 4096, 4096, 128) if c.cluster} == {0, 4}
    assert {c.occupancy for c in candidates(9, 4096, 4096, 128) if c.cluster} == {0}
    assert candidates(1, 4096, 4096, 128)[0].occupancy == 0  # the untuned default stays the shipped budget


def test_kept_weights_and_the_gemv_switch_change_the_candidates(monkeypatch):
    """A kept dequantized weight makes dequantize + cuBLAS worth timing from 32 rows (it then costs what
    bf16 costs); QUANTLLM_CUDA_GEMV=0 leaves the few-row kernel out."""
    assert not any(c.dequant for c in candidates(32, 4096, 4096, 128))
    assert any(c.dequant for c in candidates(32, 4096, 4096, 128, kept=True))
    assert not any(c.dequant for c in candidates(16, 4096, 4096, 128, kept=True))
    monkeypatch.setenv(cuda_kernel.GEMV_ENV, "0")
    assert candidates(1, 4096, 4096, 128) and not any(c.cluster for c in candidates(1, 4096, 4096, 128))


def test_shipped_defaults_name_real_candidates(monkeypatch):
    """Every shipped pick must be a label the tuner could choose for its key, else it is never used
    (the shipped GPUs are sm_90: cluster sizes of the few-row kernel and the wgmma kernel count)."""
    monkeypatch.setattr(cuda_kernel, "_clusters_ok", lambda: True)
    monkeypatch.setattr(cuda_kernel, "_wgmma_ok", lambda: True)
    monkeypatch.setattr(cuda_kernel, "sm_count", lambda: 132)
    shipped = json.loads(cuda_kernel.DEFAULTS_FILE.read_text())
    assert shipped, "cuda_defaults.json holds measured picks"
    for gpu, picks in shipped.items():
        for key, label in picks.items():
            _, rows, k, n, kind, _, group, _ = ast.literal_eval(key)
            assert label in {c.label() for c in candidates(rows, n, k, group, kind=kind)}, (gpu, key, label)


def test_preload_walks_every_launch_config():
    """qmm_preload must reach every kernel a launch can pick (else that kernel may first load inside a
    graph capture): each mma tile at each row tile, both few-row register budgets, each wgmma tile and
    row block, each with one group a stage and several."""
    src = (cuda_build.CSRC / "cuda_qmm.cu").read_text()
    body = src[src.index("int qmm_preload() {"):]
    body = body[:body.index("\n}\n")]
    assert "for (const int group : {4096, 32})" in body
    assert "for (const int m : {1, 17, 33})" in body  # launch_rows: <= 16, <= 32 and more rows
    assert f"for (int tile = 0; tile < {len(TILES)}; ++tile) keep(qmm_run(&a, tile, nullptr));" in body
    for occupancy in (cuda_kernel.GEMV_BLOCKS_PER_SM, cuda_kernel.GEMV_BLOCKS_PER_SM_SMALL):
        assert f"keep(qmm_gemv(&a, 1, {occupancy}, nullptr));" in body
    assert "for (const int m : {1, 9})" in body  # x as one 8-row operand, and as two
    assert f"for (int tile = 0; tile < {len(cuda_kernel.WG_TILES)}; ++tile)" in body
    assert "for (const int mn : {" + ", ".join(map(str, cuda_kernel.WG_ROWS)) + "})" in body
    assert "dequant_kernel" in body


class FakeLibrary:
    def __init__(self, error=0):
        self.error, self.calls = error, []

    def qmm_set_device(self, device):
        self.calls.append(("device", device))
        return 0

    def qmm_preload(self):
        self.calls.append("preload")
        return self.error

    def qmm_error_string(self, err):
        return b"no kernel image is available for execution on the device"


def test_preload_once_per_library_and_device(monkeypatch):
    monkeypatch.setattr(cuda_build, "_PRELOADED", set())
    lib, other = FakeLibrary(), FakeLibrary()
    for _ in range(3):
        cuda_build.preload(lib, 0)
    cuda_build.preload(lib, 1)
    cuda_build.preload(other, 0)
    assert lib.calls == [("device", 0), "preload", ("device", 1), "preload"]
    assert other.calls == [("device", 0), "preload"]


def test_a_failed_preload_raises_and_is_tried_again(monkeypatch):
    monkeypatch.setattr(cuda_build, "_PRELOADED", set())
    lib = FakeLibrary(error=209)
    for _ in range(2):
        with pytest.raises(BuildError, match="loading the CUDA kernels on device 0 failed: no kernel image"):
            cuda_build.preload(lib, 0)
    assert lib.calls.count("preload") == 2


def test_tiles_match_the_cuda_source():
    src = (cuda_build.CSRC / "cuda_qmm.cu").read_text()
    for i, (bn, bk, warps) in enumerate(TILES):
        assert f"struct Shape<{i}> {{ static constexpr int BN = {bn}, BK = {bk}, WARPS = {warps}; }}" in src
    for i, (bn, bk, blocks) in enumerate(cuda_kernel.WG_TILES):
        assert f"struct WgShape<{i}> {{ static constexpr int WG = {bn // 64}, BK = {bk}, BLOCKS = {blocks}; }}" in src
    assert f"S::BLOCKS > 1 && MN > {cuda_kernel.WG_SHARED_ROWS}" in src
    # the few-row kernel's two register budgets, and the small one only for x as one 8-row operand
    small, rows = cuda_kernel.GEMV_BLOCKS_PER_SM_SMALL, cuda_kernel.GEMV_SMALL_MAX_ROWS
    assert f"if (occupancy == {small}) return a->M <= {rows} ? launch_gemv<false, {small}>" in src
    assert f"if (occupancy != {cuda_kernel.GEMV_BLOCKS_PER_SM}) return cudaErrorInvalidValue;" in src


@pytest.mark.parametrize("m", [2, 16, 17, 33, 64, 65, 130, 256, 1000])
@pytest.mark.parametrize("k, n, group", [(4096, 14336, 128), (14336, 4096, 32), (1088, 320, 64), (4096, 4096, 4096)])
def test_wgmma_candidates_cover_the_rows_and_fit(fake_gpu, monkeypatch, m, k, n, group):
    """sm_90 only, int4 and codebooks: up to 64 rows one row block (MN >= M, K splits allowed), beyond
    that row blocks of 64..256 rows and no splits; every tile divides the shape and the group."""
    monkeypatch.setattr(cuda_kernel, "sm_count", lambda: 132)
    cands = cuda_kernel.wgmma_candidates(m, n, k, group, "int4")
    fits = [(bn, bk) for bn, bk, _ in cuda_kernel.WG_TILES if n % bn == 0 and k % bk == 0]
    assert bool(cands) == bool(fits)
    for c in cands:
        bn, bk, blocks = cuda_kernel.WG_TILES[c.tile]
        assert blocks == 1 or c.mn <= cuda_kernel.WG_SHARED_ROWS  # two blocks' accumulators fit to 64 rows
        assert n % bn == 0 and k % bk == 0 and (bk % group == 0 if group < bk else group % bk == 0 or group >= k)
        assert c.mn in cuda_kernel.WG_ROWS and 4 * c.mn * bk * 2 <= cuda_kernel.WG_SMEM
        if m <= cuda_kernel.SPLIT_MAX_ROWS:
            assert c.mn == min(r for r in cuda_kernel.WG_ROWS if r >= m)  # the smallest block holding every row
        else:
            assert c.splits == 1 and c.mn >= 64
    assert len({c.label() for c in cands}) == len(cands)
    assert all(c in candidates(m, n, k, group) for c in cands)


def test_wgmma_only_on_sm90_for_4bit_formats(fake_gpu, monkeypatch):
    monkeypatch.setattr(cuda_kernel, "sm_count", lambda: 132)
    assert cuda_kernel.wgmma_candidates(16, 4096, 4096, 128, "cb4")
    assert not cuda_kernel.wgmma_candidates(16, 4096, 4096, 128, "int8")
    assert not cuda_kernel.wgmma_candidates(1, 4096, 4096, 128, "int4")  # one row: the few-row kernel
    monkeypatch.setenv(cuda_kernel.WGMMA_ENV, "0")
    assert not cuda_kernel.wgmma_candidates(16, 4096, 4096, 128, "int4")
    monkeypatch.delenv(cuda_kernel.WGMMA_ENV)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert not any(c.mn for c in candidates(16, 4096, 4096, 128))


# ---- on a GPU -----------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU with compute capability 8.0+ (and nvcc to build)")
CASES = [("int4", 128, "none", False), ("int4", 32, "int", False), ("int4", 128, "min", False),
         ("int4", -1, "none", False), ("int4", 64, "none", True), ("nf4", 64, "none", False),
         ("fp4", 128, "none", False), ("int8", -1, "none", False), ("int8", 128, "int", False)]


def random_packed(fmt_name, k, n, group, zero_mode, act_order) -> PackedWeight:
    fmt, dev = get_format(fmt_name), "cuda"
    g = 1 if group <= 0 else -(-k // group)
    codes = torch.randint(0, 1 << fmt.bits, (n, k), dtype=torch.uint8, device=dev)
    scales = (torch.rand(n, g, device=dev) * 0.02 + 0.001).half()
    zeros = {"none": None, "int": torch.randint(0, 1 << fmt.bits, (n, g), dtype=torch.uint8, device=dev),
             "min": (-torch.rand(n, g, device=dev) * 0.1).half()}[zero_mode]
    g_idx = (torch.arange(k, device=dev) // group)[torch.randperm(k, device=dev)].int() if act_order else None
    return PackedWeight(fmt, k, n, group, pack_codes(codes, fmt.bits), scales, zeros, g_idx)


@pytest.fixture
def no_tuning(monkeypatch):
    monkeypatch.setenv("QUANTLLM_TRITON_TUNE", "0")  # forward() takes the heuristic default: tests time nothing


@gpu
@pytest.mark.usefixtures("no_tuning")
@pytest.mark.parametrize("compute", ["bf16", "fp16"])
@pytest.mark.parametrize("fmt, group, zero_mode, act_order", CASES)
def test_matches_the_reference_kernel(fmt, group, zero_mode, act_order, compute):
    torch.manual_seed(0)
    packed = random_packed(fmt, 512, 256, group, zero_mode, act_order)
    s = LayerSpec.of(packed, compute, "cuda")
    kern, ref = CudaKernel(packed, s), ReferenceKernel(packed, s)
    tol = 1.2e-2 if compute == "bf16" else 3e-3
    for m in (1, 7, 40, 130):
        x = torch.randn(m, 512, device="cuda", dtype=torch.float32)
        want = x.double() @ packed.dequantize(torch.float32).double().t()
        for out in (kern.forward(x), ref.forward(x)):
            assert torch.isfinite(out).all()
            assert ((out.double() - want).norm() / want.norm()).item() < tol
        xp = x.to(kern.dtype) if kern.weight.perm is None else x.to(kern.dtype)[:, kern.weight.perm].contiguous()
        for cfg in candidates(m, 256, 512, kern.weight.group, kind=kern.weight.kind):  # as config_for asks
            got = kern._launch(xp, cfg)
            again = kern._launch(xp, cfg)  # split-K workspace back to zero: only summation order may differ
            assert ((got.double() - want).norm() / want.norm()).item() < tol, cfg.label()
            assert ((again.double() - got.double()).norm() / got.double().norm()).item() < 1e-2, cfg.label()


def test_refuses_weights_left_on_the_host(fake_gpu):
    """A layer on the CPU with its input on the GPU: a clear error, not host pointers in a kernel launch
    (an illegal address that poisons the CUDA context; session 17 met it in a test)."""
    packed = PackedWeight(get_format("int4"), 128, 64, 64, pack_codes(torch.zeros(64, 128, dtype=torch.uint8), 4),
                          torch.ones(64, 2, dtype=torch.float16), None, None)
    with pytest.raises(ValueError, match=r"on a CUDA device, not cpu: move the model first"):
        CudaKernel(packed, LayerSpec.of(packed, "bf16", "cuda"))
    assert fake_gpu == []  # refused before any library is loaded


@gpu
def test_device_decoder_reproduces_the_reference_weight():
    packed = random_packed("int4", 256, 128, 64, "int", False)
    kern = CudaKernel(packed, LayerSpec.of(packed, "fp16", "cuda"))
    want = packed.dequantize(torch.float32)
    assert (kern.dequantize().float() - want).abs().max() <= 1e-3 * want.abs().max()


def test_programmatic_dependent_launch_covers_every_fused_kernel():
    """Every fused kernel (few-row included, since its x loads stay below the wait: test_cuda_pdl_order.py)
    launches through launch_ex, which asks for PDL while the library has it enabled."""
    src = (cuda_build.CSRC / "cuda_qmm.cu").read_text()
    assert "if (pdl_enabled) {" in src
    gemv_launch = src[src.index("cudaError_t launch_gemv("):src.index("#if QMM_WGMMA && QMM_FMT != 2")]
    assert "smem, stream, a, cluster);" in gemv_launch


@pytest.mark.parametrize("value, on", [(None, 1), ("1", 1), ("0", 0), (" 0 ", 0), ("yes", 1)])
def test_programmatic_dependent_launch_is_on_unless_switched_off(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv(cuda_build.PDL_ENV, raising=False)
    else:
        monkeypatch.setenv(cuda_build.PDL_ENV, value)
    assert cuda_build.pdl_from_env() == on

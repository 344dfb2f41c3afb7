// C entry points of one kernel library variant: activation dtype, weight format and zero mode are
// fixed at compile time (-DQMM_BF16=0/1 -DQMM_FMT=0/1/2 -DQMM_ZM=0/1/2, see cuda_build.py), so
// each library holds only the kernels one kind of layer needs and builds in seconds.
// Every entry point returns a cudaError_t (0 = launched); ctypes calls them, no torch headers.
#include <cuda_runtime.h>

#ifndef QMM_CLUSTERS
#define QMM_CLUSTERS 0  // thread-block clusters (sm_90+): cuda_build.arch_flags sets it
#endif

#ifndef QMM_WGMMA
#define QMM_WGMMA 0  // wgmma kernel (sm_90a): cuda_build.arch_flags sets it
#endif

#include "cuda_gemv.cuh"
#include "cuda_qmm.cuh"
#include "cuda_wgk.cuh"

#ifndef QMM_BF16
#define QMM_BF16 1
#endif
#ifndef QMM_FMT
#define QMM_FMT 0
#endif
#ifndef QMM_ZM
#define QMM_ZM 0
#endif

namespace {
using T = std::conditional<QMM_BF16, __nv_bfloat16, half>::type;
constexpr int STAGES = 4;

// Programmatic dependent launch (cuda_ptx.cuh pdl_wait) for every fused kernel where they were built for
// sm_90, while qmm_set_pdl(1) (cuda_build.py sets it from QUANTLLM_CUDA_PDL).
int pdl_enabled = 0;

// Lazy module loading (CUDA's default since 12.2, PyTorch's too) loads a kernel at its first launch; a
// first launch inside a CUDA-graph capture loads code mid-capture and invalidates the capture (seen on the
// H200: the lean decode step's graph, after other layers in the process had tuned). qmm_preload() walks
// every launch path with `preloading` set: launch_ex then asks the kernel's attributes, which loads it,
// and no shared-memory limit is raised (each stays as the real launches leave it).
bool preloading = false;

// Every kernel launch: `cluster` blocks along x meet in a thread-block cluster when > 1; with PDL when enabled.
template <typename K>
cudaError_t launch_ex(K kernel, dim3 grid, int threads, int smem, cudaStream_t stream, const qmm::Args& a,
                      int cluster = 1) {
  if (preloading) {
    cudaFuncAttributes attrs;
    return cudaFuncGetAttributes(&attrs, kernel);
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(threads, 1, 1);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (cluster > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl_enabled) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, a);
  return err != cudaSuccess ? err : cudaGetLastError();
}

// Launch shapes (BN, BK, warps), indexed by the tuner's `tile`; keep in step with cuda_kernel.TILES.
template <int TILE> struct Shape;
template <> struct Shape<0> { static constexpr int BN = 128, BK = 128, WARPS = 8; };
template <> struct Shape<1> { static constexpr int BN = 256, BK = 64, WARPS = 8; };
template <> struct Shape<2> { static constexpr int BN = 64, BK = 256, WARPS = 8; };
template <> struct Shape<3> { static constexpr int BN = 128, BK = 64, WARPS = 4; };
template <> struct Shape<4> { static constexpr int BN = 256, BK = 128, WARPS = 8; };
template <> struct Shape<5> { static constexpr int BN = 64, BK = 64, WARPS = 4; };  // fits any 64 x 64 grid

template <int TILE, int MT, bool ONE_GROUP>
cudaError_t launch(const qmm::Args& a, cudaStream_t stream) {
  using S = Shape<TILE>;
  using C = qmm::Tile<T, QMM_FMT, QMM_ZM, MT, S::BN, S::BK, S::WARPS, STAGES>;
  auto kernel = qmm::qmm_kernel<T, QMM_FMT, QMM_ZM, MT, S::BN, S::BK, S::WARPS, STAGES, ONE_GROUP>;
  if (a.N % S::BN || a.K % S::BK || a.k_split % S::BK || (a.group < S::BK && S::BK % a.group) ||
      (a.group >= S::BK && a.group % S::BK) || (a.group < S::BK && (1 << a.group_shift) != a.group))
    return cudaErrorInvalidValue;  // the Python side filters configs; this keeps a wrong call harmless
  const int smem = C::smem_bytes(a.group);
  static int raised = 48 * 1024;  // per instantiation: the dynamic limit already granted
  if (smem > raised && !preloading) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    raised = smem;
  }
  return launch_ex(kernel, dim3((a.M + C::MROWS - 1) / C::MROWS, a.N / S::BN, a.splits), C::THREADS, smem, stream, a);
}

template <int TILE, int MT>
cudaError_t launch_groups(const qmm::Args& a, cudaStream_t stream) {
  return a.group >= Shape<TILE>::BK ? launch<TILE, MT, true>(a, stream) : launch<TILE, MT, false>(a, stream);
}

template <int TILE>
cudaError_t launch_rows(const qmm::Args& a, cudaStream_t stream) {
  if (a.M <= 16) return launch_groups<TILE, 1>(a, stream);
  if (a.M <= 32) return launch_groups<TILE, 2>(a, stream);
  return launch_groups<TILE, 4>(a, stream);  // more rows: blocks of 64 along M
}

// The few-row kernel (cuda_gemv.cuh): grid (cluster, N / 64), `cluster` blocks along K meeting in
// distributed shared memory (cluster > 1 needs sm_90); or, with a.splits > 1 (and cluster 1), grid
// (a.splits, N / 64), the blocks along K meeting in the split-K workspace.
template <bool M16, int OCC = 3>
cudaError_t launch_gemv(const qmm::Args& a, int cluster, cudaStream_t stream) {
  auto kernel = qmm::gemv_kernel<T, QMM_FMT, QMM_ZM, M16, OCC>;
  if (a.M < 1 || a.M > (M16 ? 16 : 8) || a.N % 64 || a.K % 16 || cluster < 1 || cluster > 8 ||
      (a.group < a.K && (a.group < 16 || (1 << a.group_shift) != a.group)) || (!QMM_CLUSTERS && cluster > 1) ||
      (a.splits > 1 && cluster > 1) || a.splits < 1 || a.splits > a.K / 16)
    return cudaErrorInvalidValue;
  const int blocks = a.splits > 1 ? a.splits : cluster;
  const int smem = qmm::gemv_smem_bytes<T, QMM_FMT, QMM_ZM, M16>(a, blocks, cluster);
  static int raised = 48 * 1024;
  if (smem > raised && !preloading) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    raised = smem;
  }
  // With PDL as the other kernels: its first batch of weight loads is issued before pdl_wait(), x is read
  // after it through coherent loads (cuda_gemv.cuh Batch::load_x says why; session 7 found int4 M=1 wrong
  // in graph chains while x went through the read-only path, which ptxas hoisted above the wait).
  return launch_ex(kernel, dim3(blocks, a.N / 64, 1), qmm::GEMV_WARPS * 32, smem, stream, a, cluster);
}
#if QMM_WGMMA && QMM_FMT != 2
// The wgmma kernel (cuda_wgk.cuh): (warpgroups, BK, blocks an SM's registers must hold) by the tuner's
// `tile`; keep in step with cuda_kernel.WG_TILES. MN (16..256) is the rows of x one block multiplies.
// Tile 3 is tile 2 capped at 128 registers a thread so that two blocks share an SM: to 64 rows it took up to
// 16 % less time on the wide shapes and lost on 4096x4096 (gpu_wgmma_pipeline.md), so the tuner picks.
template <int TILE> struct WgShape;
template <> struct WgShape<0> { static constexpr int WG = 1, BK = 128, BLOCKS = 1; };
template <> struct WgShape<1> { static constexpr int WG = 2, BK = 64, BLOCKS = 1; };
template <> struct WgShape<2> { static constexpr int WG = 2, BK = 128, BLOCKS = 1; };
template <> struct WgShape<3> { static constexpr int WG = 2, BK = 128, BLOCKS = 2; };
// Few rows: small stages, so more of them keep enough weight bytes in flight to stream HBM; two blocks an
// SM at 64 rows share its shared memory, so 3 stages each. The -D knobs time other choices side by side
// (gpu_wgmma_pipeline.py --builds).
#ifndef QMM_WG_STAGES_32
#define QMM_WG_STAGES_32 6  // blocks of 16 and 32 rows
#endif
#ifndef QMM_WG_STAGES_64
#define QMM_WG_STAGES_64 5
#endif
#ifndef QMM_WG_STAGES_64_SHARED
#define QMM_WG_STAGES_64_SHARED 3  // two blocks an SM
#endif
constexpr int wg_stages(int mn, int blocks) {
  return mn <= 32 ? QMM_WG_STAGES_32 : mn > 64 ? 4 : blocks > 1 ? QMM_WG_STAGES_64_SHARED : QMM_WG_STAGES_64;
}

template <int TILE, int MN, bool ONE_GROUP>
cudaError_t launch_wg(const qmm::Args& a, cudaStream_t stream) {
  using S = WgShape<TILE>;
  constexpr int STAGES = wg_stages(MN, S::BLOCKS);
  using C = qmm::WgTile<T, QMM_FMT, QMM_ZM, MN, S::WG, S::BK, STAGES>;
  if constexpr (4 * (MN * S::BK * 2) > 200 * 1024) {
    return cudaErrorInvalidValue;  // x tiles alone overflow shared memory: not instantiated (cuda_kernel.WG_SMEM)
  } else if constexpr (S::BLOCKS > 1 && MN > 64) {
    return cudaErrorInvalidValue;  // more rows' accumulators overflow the shared SM's registers (WG_SHARED_ROWS)
  } else {
    auto kernel = qmm::wg_kernel<T, QMM_FMT, QMM_ZM, MN, S::WG, S::BK, STAGES, S::BLOCKS, ONE_GROUP>;
    if (a.N % C::BN || a.K % S::BK || a.k_split % S::BK || (a.group < S::BK && S::BK % a.group) ||
        (a.group >= S::BK && a.group < a.K && a.group % S::BK) || (a.group < S::BK && (1 << a.group_shift) != a.group) ||
        (a.splits > 1 && a.M > MN))
      return cudaErrorInvalidValue;
    const int smem = C::smem_bytes(a.group);
    if (smem > 227 * 1024) return cudaErrorInvalidValue;
    static int raised = 48 * 1024;
    if (smem > raised && !preloading) {
      const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      if (err != cudaSuccess) return err;
      raised = smem;
    }
    return launch_ex(kernel, dim3((a.M + MN - 1) / MN, a.N / C::BN, a.splits), C::THREADS, smem, stream, a);
  }
}

template <int TILE, int MN>
cudaError_t launch_wg_groups(const qmm::Args& a, cudaStream_t stream) {
  return a.group >= WgShape<TILE>::BK ? launch_wg<TILE, MN, true>(a, stream) : launch_wg<TILE, MN, false>(a, stream);
}

template <int TILE>
cudaError_t launch_wg_rows(const qmm::Args& a, int mn, cudaStream_t stream) {
  switch (mn) {
    case 16: return launch_wg_groups<TILE, 16>(a, stream);
    case 32: return launch_wg_groups<TILE, 32>(a, stream);
    case 64: return launch_wg_groups<TILE, 64>(a, stream);
    case 128: return launch_wg_groups<TILE, 128>(a, stream);
    case 256: return launch_wg_groups<TILE, 256>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}
#endif
}  // namespace

extern "C" {

// Which variant this library is, so a stale or mislabelled cache entry is caught at load.
int qmm_variant() { return QMM_BF16 * 100 + QMM_FMT * 10 + QMM_ZM; }

int qmm_run(const qmm::Args* a, int tile, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (tile) {
    case 0: return launch_rows<0>(*a, s);
    case 1: return launch_rows<1>(*a, s);
    case 2: return launch_rows<2>(*a, s);
    case 3: return launch_rows<3>(*a, s);
    case 4: return launch_rows<4>(*a, s);
    case 5: return launch_rows<5>(*a, s);
    default: return cudaErrorInvalidValue;
  }
}

// occupancy: the register budget, 3 or 4 blocks an SM (cuda_gemv.cuh gemv_unroll); 4 only to 8 rows.
int qmm_gemv(const qmm::Args* a, int cluster, int occupancy, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (occupancy == 4) return a->M <= 8 ? launch_gemv<false, 4>(*a, cluster, s) : cudaErrorInvalidValue;
  if (occupancy != 3) return cudaErrorInvalidValue;
  return a->M <= 8 ? launch_gemv<false>(*a, cluster, s) : launch_gemv<true>(*a, cluster, s);
}

// The wgmma kernel with `mn` rows of x a block; cudaErrorNotSupported where the library was built
// without it (before sm_90a, or int8).
int qmm_wgmma(const qmm::Args* a, int tile, int mn, void* stream) {
#if QMM_WGMMA && QMM_FMT != 2
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (tile) {
    case 0: return launch_wg_rows<0>(*a, mn, s);
    case 1: return launch_wg_rows<1>(*a, mn, s);
    case 2: return launch_wg_rows<2>(*a, mn, s);
    case 3: return launch_wg_rows<3>(*a, mn, s);
    default: return cudaErrorInvalidValue;
  }
#else
  (void)a, (void)tile, (void)mn, (void)stream;
  return cudaErrorNotSupported;
#endif
}

int qmm_dequant(const qmm::Args* a, void* w, void* stream) {
  constexpr int WARPS = 4;
  const int units = (a->K / 16) * (a->N / 64);
  qmm::dequant_kernel<T, QMM_FMT, QMM_ZM>
      <<<(units + WARPS - 1) / WARPS, WARPS * 32, 0, static_cast<cudaStream_t>(stream)>>>(*a, static_cast<T*>(w));
  return cudaGetLastError();
}

// Loads every kernel of the library (see `preloading`); call once, outside any graph capture. Returns the
// first error other than a shape a path rejects (cudaErrorInvalidValue), else 0.
int qmm_preload() {
  qmm::Args a = {};
  a.N = 1024, a.K = 4096, a.k_split = 4096, a.splits = 1;
  cudaError_t first = cudaSuccess;
  auto keep = [&](int err) {
    if (err != cudaSuccess && err != cudaErrorInvalidValue && err != cudaErrorNotSupported && first == cudaSuccess)
      first = static_cast<cudaError_t>(err);
  };
  preloading = true;
  for (const int group : {4096, 32}) {  // one group a stage, and several (the ONE_GROUP instantiations)
    a.group = group, a.group_shift = group == 32 ? 5 : 12;
    for (const int m : {1, 17, 33}) {  // the mma kernel's row tiles
      a.M = m;
      for (int tile = 0; tile < 6; ++tile) keep(qmm_run(&a, tile, nullptr));
    }
    for (const int m : {1, 9}) {  // the few-row kernel's operand counts and register budgets
      a.M = m;
      keep(qmm_gemv(&a, 1, 3, nullptr));
      keep(qmm_gemv(&a, 1, 4, nullptr));
    }
    a.M = 2;
    for (int tile = 0; tile < 4; ++tile)
      for (const int mn : {16, 32, 64, 128, 256}) keep(qmm_wgmma(&a, tile, mn, nullptr));
  }
  preloading = false;
  cudaFuncAttributes attrs;
  keep(cudaFuncGetAttributes(&attrs, qmm::dequant_kernel<T, QMM_FMT, QMM_ZM>));
  return first;
}

int qmm_set_device(int device) { return cudaSetDevice(device); }

// 0 / 1: launch without / with programmatic dependent launch (where built for sm_90); returns the old value.
int qmm_set_pdl(int on) {
  const int old = pdl_enabled;
  pdl_enabled = on && QMM_CLUSTERS;
  return old;
}

const char* qmm_error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }
}

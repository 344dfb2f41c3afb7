// Few-row kernel, stream-K schedule (opt-in prototype: the registry offers it only with
// QUANTLLM_CUDA_GEMV_STREAM=1; on an H200 correct but never the fastest candidate, see gpu_speed.md). The plain few-row kernel gives each 64-column block's K to whole
// blocks, so 4096x14336 (224 column blocks) on 132 SMs leaves 40 SMs with half the work of the
// others. Here one full wave of blocks (grid = blocks an SM holds x SMs) splits the weight's units,
// flattened (column block, band) with bands inner, into equal contiguous ranges, one per warp
// (ceil(total / warps) units each). A warp's range is one or more segments, each inside one column
// block; each segment runs the plain kernel's band loop (cuda_gemv.cuh: two batches of units in
// registers, mma run transposed, int4 groups folded in fp32) with the group rows read from global
// memory (L2) instead of staged. A segment that covers its column block's whole K writes the output;
// otherwise its sums go to the split-K workspace (red.add at L2) and the last of the column block's
// warps to arrive writes the output and leaves workspace and counter at zero, as store_split does.
// Under PDL the first segment's first batch of weight loads runs before pdl_wait(); x, the
// workspace and the output only after it.
#pragma once
#include "cuda_gemv.cuh"

namespace qmm {

constexpr int STREAM_PREFETCH_UNITS = 2 * GEMV_UNROLL;  // units a warp prefetches into L2 before pdl_wait()

// Units a warp streams: ceil(total / warps), total = (N / 64) column blocks x (K / 16) bands.
__host__ __device__ inline long long stream_per_warp(const Args& a, int warps) {
  const long long total = static_cast<long long>(a.N / 64) * (a.K / 16);
  return (total + warps - 1) / warps;
}

// Warps whose ranges meet column block cb: all of them add into its workspace slice.
__device__ __forceinline__ int stream_contributors(int cb, int bands, long long per) {
  const long long lo = static_cast<long long>(cb) * bands, hi = lo + bands - 1;
  return static_cast<int>(hi / per - lo / per + 1);
}

// Group rows of one column block straight from global memory (the interface of Groups).
template <typename T, int ZM>
struct StreamGroups {
  static constexpr int ZE = ZM == ZINT ? 1 : static_cast<int>(sizeof(T));  // bytes of a zero point
  const T* srows;       // scales + cb * 64: row grp at grp * N
  const uint8_t* zrows;  // zeros, the same rows
  int n, shift, cur;
  bool per_channel;
  __device__ __forceinline__ int of(int band) const { return per_channel ? 0 : (band * 16) >> shift; }
  __device__ __forceinline__ const T* scales(int grp) const { return srows + static_cast<size_t>(grp) * n; }
  __device__ __forceinline__ const uint8_t* zeros(int grp) const { return zrows + static_cast<size_t>(grp) * n * ZE; }
};

// One warp's sums of column block cb to the output: directly when the warp covered all of its K (whole),
// else through the workspace, the last arrival writing. Lane (g, t) holds rows 8h + 2t + e, columns 8(2j + f) + g.
template <typename T, bool M16>
__device__ __forceinline__ void stream_store(const GemvAcc<M16>& r, const Args& a, int cb, bool whole, int contributors,
                                             int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int h = 0; h < GemvAcc<M16>::H; ++h)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = 8 * h + 2 * t + (i & 1), col = 8 * (2 * j + (i >> 1)) + g;
        if (row >= a.M) continue;
        if (whole) store_out<T>(a, cb, row * 64 + col, r.acc[h][j][i]);
        else red_add(a.ws + static_cast<size_t>(row) * a.N + cb * 64 + col, r.acc[h][j][i]);
      }
  if (whole) return;
  __threadfence();  // this warp's sums are in L2 before it counts itself in
  __syncwarp();
  int last = 0;
  if (lane == 0) last = atomicAdd(a.counters + cb, 1) == contributors - 1;
  last = __shfl_sync(0xffffffffu, last, 0);
  if (!last) return;
  __threadfence();
  for (int o = lane; o < a.M * 64; o += 32) {
    float* p = a.ws + static_cast<size_t>(o / 64) * a.N + cb * 64 + o % 64;
    store_out<T>(a, cb, o, __ldcg(p));
    __stcg(p, 0.f);
  }
  if (lane == 0) a.counters[cb] = 0;
}

// Bands [b0, b1) of column block cb (after pdl_wait()).
template <typename T, int FMT, int ZM, bool M16, int U>
__device__ __forceinline__ void stream_segment(const Args& a, int cb, int b0, int b1, long long per, int lane) {
  constexpr int UNIT = FMT == INT8 ? 1024 : 512;
  const int g = lane >> 2, t = lane & 3, bands = a.K / 16, units_n = a.N / 64;
  StreamGroups<T, ZM> gs;
  gs.srows = reinterpret_cast<const T*>(a.scales) + cb * 64, gs.n = a.N, gs.shift = a.group_shift, gs.cur = -1;
  gs.zrows = reinterpret_cast<const uint8_t*>(a.zeros) + static_cast<size_t>(cb) * 64 * StreamGroups<T, ZM>::ZE;
  gs.per_channel = a.group >= a.K;
  GemvAcc<M16> r;
  r.zero();
  GroupRegs<T, FMT, ZM> gp;
  const uint8_t* qsrc = a.qw + (static_cast<size_t>(b0) * units_n + cb) * UNIT + lane * 16;
  const size_t qstride = static_cast<size_t>(units_n) * UNIT;
  const T* xlo = reinterpret_cast<const T*>(a.x) + static_cast<size_t>(g) * a.K + 2 * t;
  const T* xhi = xlo + static_cast<size_t>(8) * a.K;
  const bool has_lo = g < a.M, has_hi = M16 && g + 8 < a.M;
  Batch<FMT, U> even, odd;
  even.template load<T>(qsrc, qstride, xlo, xhi, b0, b0, b1, has_lo, has_hi);
  for (int b = b0; b < b1; b += 2 * U) {
    odd.template load<T>(qsrc, qstride, xlo, xhi, b + U, b0, b1, has_lo, has_hi);
    compute_batch<T, FMT, ZM, M16, U>(r, even, gs, gp, a, b, b1, lane);
    even.template load<T>(qsrc, qstride, xlo, xhi, b + 2 * U, b0, b1, has_lo, has_hi);
    compute_batch<T, FMT, ZM, M16, U>(r, odd, gs, gp, a, b + U, b1, lane);
  }
  if constexpr (FMT == INT4) {
    if (gs.cur >= 0) fold_group<T, ZM, M16>(r, gs.scales(gs.cur), gs.zeros(gs.cur), g);
  }
  const bool whole = b0 == 0 && b1 == bands;
  stream_store<T, M16>(r, a, cb, whole, whole ? 1 : stream_contributors(cb, bands, per), lane);
}

template <typename T, int FMT, int ZM, bool M16>
__global__ void __launch_bounds__(GEMV_WARPS * 32, 3) gemv_stream_kernel(const Args a) {
  constexpr int U = GEMV_UNROLL / (FMT == INT8 ? 2 : 1) / (M16 ? 2 : 1);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, bands = a.K / 16;
  pdl_launch();
  const long long total = static_cast<long long>(a.N / 64) * bands;
  const long long per = stream_per_warp(a, static_cast<int>(gridDim.x) * GEMV_WARPS);
  const long long w = static_cast<long long>(blockIdx.x) * GEMV_WARPS + warp;
  const long long u0 = w * per < total ? w * per : total, u1 = u0 + per < total ? u0 + per : total;
  // Before the one wait: the first units of this warp's range into L2 (no registers held across the wait;
  // the weight is constant), so that they stream while the kernel before this one finishes.
  constexpr int UNIT = FMT == INT8 ? 1024 : 512;
  for (long long u = u0 + lane; u < u1 && u < u0 + STREAM_PREFETCH_UNITS; u += 32) {
    const int cb = static_cast<int>(u / bands), band = static_cast<int>(u % bands);
    prefetch_l2(a.qw + (static_cast<size_t>(band) * (a.N / 64) + cb) * UNIT, UNIT);
  }
  pdl_wait();  // every warp, with work or not: this grid ends only after the one before it
  for (long long u = u0; u < u1;) {
    const int cb = static_cast<int>(u / bands), b0 = static_cast<int>(u % bands);
    const int b1 = static_cast<int>(u1 - u < bands - b0 ? b0 + (u1 - u) : bands);
    stream_segment<T, FMT, ZM, M16, U>(a, cb, b0, b1, per, lane);
    u += b1 - b0;
  }
}

}  // namespace qmm

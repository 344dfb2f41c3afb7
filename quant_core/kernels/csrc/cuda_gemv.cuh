// Few-row kernel (M <= 16): out[M, N] = x[M, K] @ W[N, K]^T with no shared-memory pipeline and no
// split-K workspace, built to stream the weight at memory bandwidth with a small fixed cost.
//
// It reads the same re-laid units as the mma kernel (cuda_layout.py: 16 k-rows x 64 columns, a
// lane's 16 bytes are its B fragments), so the registry can pick either per row count without a
// second copy of the weight. A block (4 warps) owns one 64-column block over K / CLUSTER rows;
// each warp streams a contiguous range of 16-row bands straight from global memory into
// registers, UNROLL units (8 x 512 bytes a warp) in flight before the first is used, and
// multiplies with mma.sync m16n8k16 (rows 0-7 or 0-15 of the A fragment are the activations,
// loaded as 4-byte pairs from L1/L2). The warps' sums meet in shared memory; on sm_90 the
// CLUSTER blocks that share a column block (a thread-block cluster along K) meet through
// distributed shared memory, each block writing 1/CLUSTER of the outputs. Nothing is left
// behind in global memory, so no counter, workspace or second pass.
//
// int4 skips the per-register zero-point and scale (two of four dequantize instructions): B is
// the raw BASE + u (one LOP3 per register, BASE = 128 bf16 / 1024 fp16, exact) and one more mma
// against a ones fragment sums the activations, S. At each group's end, per column,
//     acc += scale * (sum - (BASE + z) * S)        (+ min * S for float minimums)
// in fp32. The cancellation costs ~8 of fp32's 24 bits: far below the bf16/fp16 output.
// nf4/fp4 and int8 decode to scaled fragments as the mma kernel does (cuda_dequant.cuh).
//
// Each warp's group rows (scales, zeros) are staged by cp.async into its own shared memory at
// start, so a new group never waits on a global load.
#pragma once
#include "cuda_qmm.cuh"

#if QMM_CLUSTERS
#include <cooperative_groups.h>
#endif

namespace qmm {

constexpr int GEMV_WARPS = 4, GEMV_UNROLL = 8;

template <typename T>
struct Raw;  // int4 "raw" fragments: BASE + u in both halves of a register
template <>
struct Raw<half> {
  static constexpr uint32_t MAGIC = 0x64006400u, ONES = 0x3C003C00u;
  static constexpr float BASE = 1024.f;
};
template <>
struct Raw<__nv_bfloat16> {
  static constexpr uint32_t MAGIC = 0x43004300u, ONES = 0x3F803F80u;
  static constexpr float BASE = 128.f;
};

template <typename T>
__device__ __forceinline__ float half_to_float(uint32_t pair, int hi) {
  if constexpr (Raw<T>::BASE == 1024.f) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(hi ? pair >> 16 : pair & 0xFFFFu)));
  } else {
    return __uint_as_float(hi ? pair & 0xFFFF0000u : pair << 16);
  }
}

// Bytes of one staged group row (64 scales + 64 zero points or minimums) and of a block's
// shared memory: each warp's group rows, reused after the K loop for the warps' partial sums.
template <typename T, int ZM>
__host__ __device__ constexpr int gemv_row_bytes() {
  return 64 * (static_cast<int>(sizeof(T)) + (ZM == ZINT ? 1 : ZM == ZMIN ? static_cast<int>(sizeof(T)) : 0));
}
__host__ __device__ inline int gemv_bands_per_warp(int K, int cluster) {
  const int warps = cluster * GEMV_WARPS;
  return (K / 16 + warps - 1) / warps;
}
__host__ __device__ inline int gemv_group_rows(const Args& a, int cluster) {
  if (a.group >= a.K) return 1;
  const int per_group = a.group / 16, bpw = gemv_bands_per_warp(a.K, cluster);
  const int rows = (bpw - 1 + per_group - 1) / per_group + 1;
  return rows < a.K / a.group ? rows : a.K / a.group;
}
template <typename T, int ZM, bool M16>
__host__ int gemv_smem_bytes(const Args& a, int cluster) {
  const int staged = GEMV_WARPS * gemv_group_rows(a, cluster) * gemv_row_bytes<T, ZM>();
  const int sums = GEMV_WARPS * (M16 ? 16 : 8) * 64 * 4;
  return staged > sums ? staged : sums;
}

// Copies rows [g_lo, g_lo + rows) of this column block's scales (then zeros) into the warp's slot.
template <typename T, int ZM>
__device__ __forceinline__ void stage_groups(uint8_t* slot, int stride_rows, const Args& a, int cb, int g_lo, int rows,
                                             int lane) {
  T* ss = reinterpret_cast<T*>(slot);
  const T* src = reinterpret_cast<const T*>(a.scales) + static_cast<size_t>(g_lo) * a.N + cb * 64;
  for (int i = lane; i < rows * 8; i += 32) cp_async16(ss + i * 8, src + static_cast<size_t>(i / 8) * a.N + (i % 8) * 8);
  if constexpr (ZM != ZNONE) {
    constexpr int ZE = ZM == ZINT ? 1 : static_cast<int>(sizeof(T)), CH = 64 * ZE / 16;  // 16-byte chunks a row
    uint8_t* zs = slot + stride_rows * 64 * sizeof(T);
    const uint8_t* zsrc = reinterpret_cast<const uint8_t*>(a.zeros) + (static_cast<size_t>(g_lo) * a.N + cb * 64) * ZE;
    for (int i = lane; i < rows * CH; i += 32)
      cp_async16(zs + i * 16, zsrc + static_cast<size_t>(i / CH) * a.N * ZE + (i % CH) * 16);
  }
  cp_async_commit();
}

// int4: one group's raw sums into the result (see the top). Lane columns 8s + 2t + e sit at
// 16t + 8e + s of a staged (shuffled) group row.
template <typename T, int ZM, bool M16>
__device__ __forceinline__ void fold_group(float (&acc)[8][4], float (&c)[8][4], float (&cs)[4], const T* srow,
                                           const uint8_t* zrow, int t) {
  const uint4 s0 = *reinterpret_cast<const uint4*>(srow + 16 * t), s1 = *reinterpret_cast<const uint4*>(srow + 16 * t + 8);
  const uint32_t sw[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
  uint32_t zw[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
  if constexpr (ZM == ZINT) {
    const uint4 z = *reinterpret_cast<const uint4*>(zrow + 16 * t);
    zw[0] = z.x, zw[1] = z.y, zw[2] = z.z, zw[3] = z.w;
  } else if constexpr (ZM == ZMIN) {
    const uint4 m0 = *reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(zrow) + 16 * t);
    const uint4 m1 = *reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(zrow) + 16 * t + 8);
    zw[0] = m0.x, zw[1] = m0.y, zw[2] = m0.z, zw[3] = m0.w, zw[4] = m1.x, zw[5] = m1.y, zw[6] = m1.z, zw[7] = m1.w;
  }
#pragma unroll
  for (int e = 0; e < 2; ++e)
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      const int i = 8 * e + s;  // position in the lane's 16 staged columns
      const float sc = half_to_float<T>(sw[i >> 1], i & 1);
      float zz = Raw<T>::BASE, mn = 0.f;
      if constexpr (ZM == ZNONE) zz += 8.f;
      if constexpr (ZM == ZINT) zz += static_cast<float>((zw[i >> 2] >> (8 * (i & 3))) & 0xFFu);
      if constexpr (ZM == ZMIN) mn = half_to_float<T>(zw[i >> 1], i & 1);
      acc[s][e] = fmaf(sc, fmaf(-zz, cs[0], c[s][e]), fmaf(mn, cs[0], acc[s][e]));
      if constexpr (M16) acc[s][2 + e] = fmaf(sc, fmaf(-zz, cs[2], c[s][2 + e]), fmaf(mn, cs[2], acc[s][2 + e]));
    }
#pragma unroll
  for (int s = 0; s < 8; ++s)
#pragma unroll
    for (int i = 0; i < 4; ++i) c[s][i] = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) cs[i] = 0.f;
}

// int4: the raw fragments of one unit (BASE + u) and their mma into the group's sums.
template <typename T>
__device__ __forceinline__ void mma_raw_int4(float (&c)[8][4], float (&cs)[4], uint4 q0, const uint32_t af[4]) {
  const uint32_t q[4] = {q0.x, q0.y, q0.z, q0.w};
  const uint32_t ones[2] = {Raw<T>::ONES, Raw<T>::ONES};
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int f = 0; f < 2; ++f) {
      // subtile 2j + f, register r: nibbles 2f + r (low half) and 2f + r + 4 (high half) of word j
      const uint32_t b[2] = {mask_or<0x000f000fu, Raw<T>::MAGIC>(q[j] >> (8 * f)),
                             mask_or<0x000f000fu, Raw<T>::MAGIC>(q[j] >> (8 * f + 4))};
      mma16816<T>(c[2 * j + f], af, b);
    }
  mma16816<T>(cs, af, ones);
}

// The block's partial sums [M][64] (fp32, in shared memory) to the output, or, in a cluster, summed
// with the other blocks' through distributed shared memory, each block writing its share.
template <typename T>
__device__ __forceinline__ void gemv_store(float* sums, const Args& a, int cb) {
  const int outputs = a.M * 64, tid = threadIdx.x;
  constexpr int THREADS = GEMV_WARPS * 32;
  if (gridDim.x == 1) {
    for (int o = tid; o < outputs; o += THREADS)
      reinterpret_cast<T*>(a.out)[static_cast<size_t>(o / 64) * a.N + cb * 64 + o % 64] = static_cast<T>(sums[o]);
    return;
  }
#if QMM_CLUSTERS && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every block's sums are in its shared memory
  const int rank = static_cast<int>(cluster.block_rank()), blocks = static_cast<int>(gridDim.x);
  for (int o = rank * THREADS + tid; o < outputs; o += blocks * THREADS) {
    float v = 0.f;
    for (int r = 0; r < blocks; ++r) v += cluster.map_shared_rank(sums, r)[o];
    reinterpret_cast<T*>(a.out)[static_cast<size_t>(o / 64) * a.N + cb * 64 + o % 64] = static_cast<T>(v);
  }
  cluster.sync();  // no block leaves while another may still read its shared memory
#endif
}

// This warp's sums (rows g and g + 8, columns 8s + 2t + e) to its slot, then the 4 warps' slots summed
// in place into slot 0 (each output by one thread, in warp order: deterministic).
template <bool M16>
__device__ __forceinline__ float* reduce_warps(const float (&acc)[8][4], float* red, const Args& a, int warp, int lane) {
  constexpr int ROWS = M16 ? 16 : 8;
  const int g = lane >> 2, t = lane & 3;
  float* mine = red + warp * ROWS * 64;
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    *reinterpret_cast<float2*>(mine + g * 64 + 8 * s + 2 * t) = make_float2(acc[s][0], acc[s][1]);
    if constexpr (M16) *reinterpret_cast<float2*>(mine + (g + 8) * 64 + 8 * s + 2 * t) = make_float2(acc[s][2], acc[s][3]);
  }
  __syncthreads();
  for (int o = threadIdx.x; o < a.M * 64; o += GEMV_WARPS * 32) {
    float v = red[o];
#pragma unroll
    for (int w = 1; w < GEMV_WARPS; ++w) v += red[w * ROWS * 64 + o];
    red[o] = v;
  }
  __syncthreads();
  return red;
}

template <typename T, int FMT, int ZM, bool M16>
__global__ void __launch_bounds__(GEMV_WARPS * 32, 3) gemv_kernel(const Args a) {
  constexpr int UNIT = FMT == INT8 ? 1024 : 512, U = GEMV_UNROLL;
  extern __shared__ __align__(16) uint8_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int cb = blockIdx.y, bands = a.K / 16, units_n = a.N / 64;
  const int bpw = gemv_bands_per_warp(a.K, gridDim.x);
  const int b0 = min(bands, (static_cast<int>(blockIdx.x) * GEMV_WARPS + warp) * bpw), b1 = min(bands, b0 + bpw);
  const bool per_channel = a.group >= a.K;
  const int stride_rows = gemv_group_rows(a, gridDim.x);
  const int g_lo = per_channel ? 0 : (b0 * 16) >> a.group_shift;
  uint8_t* slot = smem + warp * stride_rows * gemv_row_bytes<T, ZM>();
  constexpr int ZROW = ZM == ZINT ? 64 : 64 * static_cast<int>(sizeof(T));  // bytes of a staged zero row
  const T* srows = reinterpret_cast<const T*>(slot);
  const uint8_t* zrows = slot + stride_rows * 64 * sizeof(T);
  if (b0 < b1) stage_groups<T, ZM>(slot, stride_rows, a, cb, g_lo, per_channel ? 1 : (((b1 - 1) * 16) >> a.group_shift) - g_lo + 1, lane);

  float acc[8][4], c[8][4], cs[4] = {0.f, 0.f, 0.f, 0.f};  // c, cs: int4's sums of the current group
#pragma unroll
  for (int s = 0; s < 8; ++s)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[s][i] = c[s][i] = 0.f;
  GroupRegs<T, FMT, ZM> gp;
  int cur = -1;
  const uint8_t* qsrc = a.qw + (static_cast<size_t>(b0) * units_n + cb) * UNIT + lane * 16;
  const size_t qstride = static_cast<size_t>(units_n) * UNIT;
  const T* xlo = reinterpret_cast<const T*>(a.x) + static_cast<size_t>(g) * a.K + 2 * t;
  const T* xhi = xlo + static_cast<size_t>(8) * a.K;
  const bool has_lo = g < a.M, has_hi = M16 && g + 8 < a.M;
  for (int b = b0; b < b1; b += U) {
    uint4 q0[U], q1[U];
    uint32_t af[U][4];
#pragma unroll
    for (int i = 0; i < U; ++i) {  // every load of the batch before any use
      const bool in = b + i < b1;
      const uint8_t* p = qsrc + static_cast<size_t>(b - b0 + i) * qstride;
      q0[i] = ld_stream16(p, in);
      q1[i] = FMT == INT8 ? ld_stream16(p + 512, in) : q0[i];
      const int k = (b + i) * 16;
      af[i][0] = in && has_lo ? __ldg(reinterpret_cast<const unsigned int*>(xlo + k)) : 0u;
      af[i][2] = in && has_lo ? __ldg(reinterpret_cast<const unsigned int*>(xlo + k + 8)) : 0u;
      af[i][1] = in && has_hi ? __ldg(reinterpret_cast<const unsigned int*>(xhi + k)) : 0u;
      af[i][3] = in && has_hi ? __ldg(reinterpret_cast<const unsigned int*>(xhi + k + 8)) : 0u;
    }
    if (b == b0) {
      cp_async_wait<0>();  // this warp's group rows
      __syncwarp();
    }
#pragma unroll
    for (int i = 0; i < U; ++i) {
      if (b + i >= b1) break;
      const int grp = per_channel ? 0 : ((b + i) * 16) >> a.group_shift;
      if constexpr (FMT == INT4) {
        if (grp != cur && cur >= 0) fold_group<T, ZM, M16>(acc, c, cs, srows + (cur - g_lo) * 64, zrows + (cur - g_lo) * ZROW, t);
        cur = grp;
        mma_raw_int4<T>(c, cs, q0[i], af[i]);
      } else {
        if (grp != cur) {
          gp.load(srows + (grp - g_lo) * 64, zrows + (grp - g_lo) * ZROW, lane);
          cur = grp;
        }
        uint32_t bf[8][2];
        fragments_from<T, FMT, ZM>(q0[i], q1[i], gp, a, bf);
#pragma unroll
        for (int s = 0; s < 8; ++s) mma16816<T>(acc[s], af[i], bf[s]);
      }
    }
  }
  if constexpr (FMT == INT4) {
    if (cur >= 0) fold_group<T, ZM, M16>(acc, c, cs, srows + (cur - g_lo) * 64, zrows + (cur - g_lo) * ZROW, t);
  }
  __syncthreads();  // every warp is done with its staged groups: the space takes the partial sums
  gemv_store<T>(reduce_warps<M16>(acc, reinterpret_cast<float*>(smem), a, warp, lane), a, cb);
}

}  // namespace qmm

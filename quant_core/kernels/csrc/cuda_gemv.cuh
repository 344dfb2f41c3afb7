// Few-row kernel (M <= 16): out[M, N] = x[M, K] @ W[N, K]^T with no shared-memory pipeline and no
// split-K workspace, built to stream the weight at memory bandwidth with a small fixed cost.
//
// It reads the same re-laid units as the mma kernel (cuda_layout.py: 16 k-rows x 64 columns, a
// lane's 16 bytes are its fragments), so the registry can pick either per row count without a
// second copy of the weight. A block (4 warps) owns one 64-column block over K / CLUSTER rows;
// each warp streams a contiguous range of 16-row bands straight from global memory into
// registers, two batches of U units in flight (the next batch's loads are issued before the
// current one is multiplied), and multiplies with mma.sync m16n8k16 run transposed: the weight
// unit is the A operand (two n8 subtiles' B registers are exactly one A fragment) and the
// activations the B operand (8 rows of x, loaded as 4-byte pairs from L1/L2), so for M <= 8 no
// half of an mma is spent on absent rows. The warps' sums meet in shared memory; on sm_90 the
// CLUSTER blocks that share a column block (a thread-block cluster along K) meet through
// distributed shared memory, each block writing 1/CLUSTER of the outputs. Nothing is left
// behind in global memory, so no counter, workspace or second pass.
//
// int4 skips the per-register zero point and scale (two of four dequantize instructions): A is
// the raw BASE + u (one LOP3 per register, BASE = 128 bf16 / 1024 fp16, exact) and one more mma
// with ones as A sums the activations, S. At each group's end, per column,
//     acc += scale * (sum - (BASE + z) * S)        (+ min * S for float minimums)
// in fp32. The cancellation costs ~8 of fp32's 24 bits: far below the bf16/fp16 output.
// nf4/fp4 do the same without S: A is the unscaled level (exact in T, looked up as the mma kernel
// does), and acc += scale * sum at each group's end, so no per-register scale multiply.
// int8 decodes to scaled fragments as the mma kernel does (cuda_dequant.cuh).
//
// Each warp's group rows (scales, zeros) are staged by cp.async into its own shared memory at
// start, so a new group never waits on a global load.
//
// Two register budgets are built up to 8 rows (OCC, gemv_unroll below): 3 blocks an SM with batches of
// 8 units, or 4 blocks with batches of 4; the tuner picks per shape. Measured on the H200 (graph replay,
// rotated weights): 4 blocks win int4 M=1 on 4096x4096 (5.5 vs 6.5 us), 4096x28672 (23.3 vs 27.9) and
// 4096x128256 (85.6 vs 90.4). What the rest of the time is: meeting along K (split-K workspace or
// cluster) ~1.3-1.7 us of a small call, the activation-sum mma ~0.2-0.6 us, the staged-group wait ~0.
#pragma once
#include "cuda_gemv_store.cuh"
#include "cuda_qmm.cuh"

namespace qmm {

// Measurement only (wrong results, benchmarks/gpu_gemv_cost.py): bit 1 skips the staged-group wait,
// 2 the meeting of the blocks along K (each block stores its own sums), 4 int4's activation-sum mma.
#ifndef QMM_GEMV_ABLATE
#define QMM_GEMV_ABLATE 0
#endif
constexpr int GEMV_WARPS = 4;
// Units a batch (M <= 8, 4-bit codes) for registers capped at OCC blocks an SM: 8 within 168 registers
// (3 blocks), 4 within 128 (4 blocks: more warps an SM, each with half the bytes in flight, and 4 x 132
// blocks a wave). Neither wins every shape on the H200 (gpu_gemv_cost.py), so the tuner picks.
template <int OCC>
__host__ __device__ constexpr int gemv_unroll() {
  static_assert(OCC == 3 || OCC == 4, "few-row kernel variants: 3 or 4 blocks an SM");
  return OCC == 4 ? 4 : 8;
}

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
__host__ __device__ int gemv_work_bytes(const Args& a, int cluster) {
  const int staged = GEMV_WARPS * gemv_group_rows(a, cluster) * gemv_row_bytes<T, ZM>();
  const int sums = GEMV_WARPS * (M16 ? 16 : 8) * 64 * 4;
  return staged > sums ? staged : sums;
}
// nf4/fp4: a table of the level pairs of every code byte, one copy per lane so that a warp's 32 reads hit
// 32 distinct banks whatever the codes: word (byte << 5) + lane = level(byte & 15) | level(byte >> 4) << 16.
template <int FMT>
__host__ __device__ constexpr int gemv_lut_bytes() {
  return FMT == CB4 ? 256 * 32 * 4 : 0;
}
// Shared memory: (nf4/fp4) the byte table, the work area, then (clusters) the receive area of
// cuda_gemv_store.cuh, [cluster][share] fp32.
template <typename T, int FMT, int ZM, bool M16>
__host__ int gemv_smem_bytes(const Args& a, int blocks, int cluster) {
  return gemv_lut_bytes<FMT>() + gemv_work_bytes<T, ZM, M16>(a, blocks) +
         (cluster > 1 ? cluster * gemv_share(a, cluster) * 4 : 0);
}

// Every block writes its own table (the rows b = tid and tid + 128, 16-byte stores), from the codebook
// registers as lookup4 decodes them; read with lut_pair below.
__device__ __forceinline__ void fill_byte_table(uint32_t* tab, const uint32_t lut[8]) {
  for (int b = threadIdx.x; b < 256; b += GEMV_WARPS * 32) {
    uint32_t pair, unused;
    lookup4(static_cast<uint32_t>(b), lut, pair, unused);
    const uint4 four = make_uint4(pair, pair, pair, pair);
#pragma unroll
    for (int c = 0; c < 32; c += 4) *reinterpret_cast<uint4*>(tab + b * 32 + c) = four;
  }
}
// The levels of the two codes in bits 8i..8i+7 of q (this lane's copy: lane4 = 4 * lane).
template <int I>
__device__ __forceinline__ uint32_t lut_pair(const uint8_t* tab, uint32_t q, uint32_t lane4) {
  const uint32_t off = (I == 0 ? q << 7 : (q >> (8 * I - 7))) & 0x7F80u;
  return *reinterpret_cast<const uint32_t*>(tab + (off | lane4));
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

// Accumulators of one warp. The mma runs transposed, out^T = W x^T: the weight unit is the A operand
// (its 16 rows = two n8 subtiles, 2j and 2j + 1, whose B-fragment registers are exactly A's), the
// activations are B (8 columns = 8 rows of x; a second tile for rows 8-15), so no half of an mma is
// spent on absent rows. Lane (g, t) holds out[m = 2t + e][n = 8(2j + f) + g] in acc[h][j][2f + e],
// h the x tile (m + 8h).
template <bool M16>
struct GemvAcc {
  static constexpr int H = M16 ? 2 : 1;
  float acc[H][4][4];  // the result
  float c[H][4][4];    // int4: sums of the current group against BASE + u
  float cs[H][4];      // int4: sums of the current group against ones: S[2t], S[2t + 1], S[2t], S[2t + 1]

  __device__ __forceinline__ void zero_group() {
#pragma unroll
    for (int h = 0; h < H; ++h) {
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) c[h][j][i] = 0.f;
#pragma unroll
      for (int i = 0; i < 4; ++i) cs[h][i] = 0.f;
    }
  }
  __device__ __forceinline__ void zero() {
    zero_group();
#pragma unroll
    for (int h = 0; h < H; ++h)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[h][j][i] = 0.f;
  }
};

// int4, nf4/fp4: one group's raw sums into the result (see the top). The lane's 8 columns 8s + g sit
// side by side at 8g + s of a staged (shuffled) group row.
template <typename T, int FMT, int ZM, bool M16>
__device__ __forceinline__ void fold_group(GemvAcc<M16>& r, const T* srow, const uint8_t* zrow, int g) {
  const uint4 sv = *reinterpret_cast<const uint4*>(srow + 8 * g);
  const uint32_t sw[4] = {sv.x, sv.y, sv.z, sv.w};
  uint32_t zw[4] = {0u, 0u, 0u, 0u};
  if constexpr (ZM == ZINT) {
    const uint2 z = *reinterpret_cast<const uint2*>(zrow + 8 * g);
    zw[0] = z.x, zw[1] = z.y;
  } else if constexpr (ZM == ZMIN) {
    const uint4 m = *reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(zrow) + 8 * g);
    zw[0] = m.x, zw[1] = m.y, zw[2] = m.z, zw[3] = m.w;
  }
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    const float sc = half_to_float<T>(sw[s >> 1], s & 1);
    float zz = Raw<T>::BASE, mn = 0.f;
    if constexpr (ZM == ZNONE) zz += 8.f;
    if constexpr (ZM == ZINT) zz += static_cast<float>((zw[s >> 2] >> (8 * (s & 3))) & 0xFFu);
    if constexpr (ZM == ZMIN) mn = half_to_float<T>(zw[s >> 1], s & 1);
#pragma unroll
    for (int h = 0; h < GemvAcc<M16>::H; ++h)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& out = r.acc[h][s >> 1][2 * (s & 1) + e];
        if constexpr (FMT == CB4) {
          out = fmaf(sc, r.c[h][s >> 1][2 * (s & 1) + e], out);
        } else {
          out = fmaf(sc, fmaf(-zz, r.cs[h][e], r.c[h][s >> 1][2 * (s & 1) + e]), fmaf(mn, r.cs[h][e], out));
        }
      }
  }
  r.zero_group();
}

// int4: one unit's raw A fragments (BASE + u: word j holds subtiles 2j, 2j + 1 at nibbles 2f + r + 4h)
// times the activations, and the activations' sums (ones as A).
template <typename T, bool M16>
__device__ __forceinline__ void mma_raw_int4(GemvAcc<M16>& r, uint4 q0, const uint32_t xb[4]) {
  const uint32_t q[4] = {q0.x, q0.y, q0.z, q0.w};
  const uint32_t ones[4] = {Raw<T>::ONES, Raw<T>::ONES, Raw<T>::ONES, Raw<T>::ONES};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    // A rows g / g + 8 = subtiles 2j / 2j + 1 (shift 0 / 8); k 2t.. / 2t + 8.. = register r (shift + 4)
    const uint32_t a[4] = {mask_or<0x000f000fu, Raw<T>::MAGIC>(q[j]), mask_or<0x000f000fu, Raw<T>::MAGIC>(q[j] >> 8),
                           mask_or<0x000f000fu, Raw<T>::MAGIC>(q[j] >> 4), mask_or<0x000f000fu, Raw<T>::MAGIC>(q[j] >> 12)};
#pragma unroll
    for (int h = 0; h < GemvAcc<M16>::H; ++h) mma16816<T>(r.c[h][j], a, xb + 2 * h);
  }
  if constexpr (!(QMM_GEMV_ABLATE & 4)) {
#pragma unroll
    for (int h = 0; h < GemvAcc<M16>::H; ++h) mma16816<T>(r.cs[h], ones, xb + 2 * h);
  }
}

// nf4/fp4: one unit's unscaled levels (bytes 0-3 of a word are lookup4's v[0], v[1], v[2], v[3]; in
// mma_scaled's A order) times the activations, the levels read from the block's byte table.
template <typename T, bool M16>
__device__ __forceinline__ void mma_raw_cb4(GemvAcc<M16>& r, uint4 q0, const uint8_t* tab, uint32_t lane4,
                                            const uint32_t xb[4]) {
  const uint32_t q[4] = {q0.x, q0.y, q0.z, q0.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t a[4] = {lut_pair<0>(tab, q[j], lane4), lut_pair<2>(tab, q[j], lane4),
                           lut_pair<1>(tab, q[j], lane4), lut_pair<3>(tab, q[j], lane4)};
#pragma unroll
    for (int h = 0; h < GemvAcc<M16>::H; ++h) mma16816<T>(r.c[h][j], a, xb + 2 * h);
  }
}

// int8: scaled fragments as the mma kernel decodes them, straight into the result.
template <typename T, int FMT, int ZM, bool M16>
__device__ __forceinline__ void mma_scaled(GemvAcc<M16>& r, uint4 q0, uint4 q1, const GroupRegs<T, FMT, ZM>& gp,
                                           const Args& a, const uint32_t xb[4]) {
  uint32_t bf[8][2];
  fragments_from<T, FMT, ZM>(q0, q1, gp, a, bf);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t w[4] = {bf[2 * j][0], bf[2 * j + 1][0], bf[2 * j][1], bf[2 * j + 1][1]};
#pragma unroll
    for (int h = 0; h < GemvAcc<M16>::H; ++h) mma16816<T>(r.acc[h][j], w, xb + 2 * h);
  }
}

// This warp's sums to its slot [m][64] of `red` (lane (g, t) holds rows 8h + 2t + e, columns 8(2j + f) + g).
template <bool M16>
__device__ __forceinline__ void warp_sums_to(const GemvAcc<M16>& r, float* red, int warp, int lane) {
  constexpr int ROWS = M16 ? 16 : 8;
  const int g = lane >> 2, t = lane & 3;
  float* mine = red + warp * ROWS * 64;
#pragma unroll
  for (int h = 0; h < GemvAcc<M16>::H; ++h)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i)  // i = 2f + e: column 8(2j + f) + g, row 8h + 2t + e
        mine[(8 * h + 2 * t + (i & 1)) * 64 + 8 * (2 * j + (i >> 1)) + g] = r.acc[h][j][i];
}

// The block's sums to the output (cuda_gemv_store.cuh): this warp's into its slot, then the block's.
template <typename T, bool M16>
__device__ __forceinline__ void gemv_store(const GemvAcc<M16>& r, float* red, float* recv, const Args& a, int cb,
                                           int warp, int lane) {
  warp_sums_to<M16>(r, red, warp, lane);
  __syncthreads();
  if constexpr (QMM_GEMV_ABLATE & 2) {
#if QMM_CLUSTERS && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (gridDim.x > 1 && a.splits == 1) cluster_wait();  // pairs with the arrival at entry
#endif
    for (int o = threadIdx.x; o < a.M * 64; o += GEMV_WARPS * 32)
      store_out<T>(a, cb, o, warp_total<GEMV_WARPS, M16 ? 16 : 8>(red, o));
    return;
  }
  store_sums<T, GEMV_WARPS, M16 ? 16 : 8>(red, recv, a, cb);
}

// One batch of U units of a warp's band range, in registers: codes and the activations' B fragments.
template <int FMT, int U>
struct Batch {
  uint4 q0[U], q1[U];
  uint32_t xb[U][4];  // x rows g (k 2t.., 2t + 8..), then rows g + 8

  // EARLY: the first batch, issued before pdl_wait() so that it streams during the previous kernel's
  // tail; through ld_early16, which ptxas keeps there (it would sink a read-only load below the wait).
  template <bool EARLY = false>
  __device__ __forceinline__ void load_codes(const uint8_t* qsrc, size_t qstride, int b, int b0, int b1) {
#pragma unroll
    for (int i = 0; i < U; ++i) {
      const bool in = b + i < b1;
      const uint8_t* p = qsrc + static_cast<size_t>(b - b0 + i) * qstride;
      q0[i] = EARLY ? ld_early16(p, in) : ld_stream16(p, in);
      q1[i] = FMT != INT8 ? q0[i] : EARLY ? ld_early16(p + 512, in) : ld_stream16(p + 512, in);
    }
  }
  // x may be the previous kernel's output (programmatic dependent launch): coherent loads that stay
  // below pdl_wait(). Through the read-only path (__ldg), ptxas hoisted one above the wait, and graph
  // chains with PDL on differed from eager ones (session 7, int4 M=1).
  template <typename T>
  __device__ __forceinline__ void load_x(const T* xlo, const T* xhi, int b, int b1, bool has_lo, bool has_hi) {
#pragma unroll
    for (int i = 0; i < U; ++i) {
      const bool in = b + i < b1;
      const int k = (b + i) * 16;
      xb[i][0] = in && has_lo ? ld_after_wait32(xlo + k) : 0u;
      xb[i][1] = in && has_lo ? ld_after_wait32(xlo + k + 8) : 0u;
      xb[i][2] = in && has_hi ? ld_after_wait32(xhi + k) : 0u;
      xb[i][3] = in && has_hi ? ld_after_wait32(xhi + k + 8) : 0u;
    }
  }
  template <typename T>
  __device__ __forceinline__ void load(const uint8_t* qsrc, size_t qstride, const T* xlo, const T* xhi, int b, int b0,
                                       int b1, bool has_lo, bool has_hi) {
    load_codes(qsrc, qstride, b, b0, b1);  // every load of the batch before any use
    load_x<T>(xlo, xhi, b, b1, has_lo, has_hi);
  }
};

// Where a warp's staged group rows are, and which group is current.
template <typename T, int ZM>
struct Groups {
  static constexpr int ZROW = ZM == ZINT ? 64 : 64 * static_cast<int>(sizeof(T));  // bytes of a staged zero row
  const T* srows;
  const uint8_t* zrows;
  int g_lo, shift, cur;
  bool per_channel;
  __device__ __forceinline__ int of(int band) const { return per_channel ? 0 : (band * 16) >> shift; }
  __device__ __forceinline__ const T* scales(int grp) const { return srows + (grp - g_lo) * 64; }
  __device__ __forceinline__ const uint8_t* zeros(int grp) const { return zrows + (grp - g_lo) * ZROW; }
};

template <typename T, int FMT, int ZM, bool M16, int U>
__device__ __forceinline__ void compute_batch(GemvAcc<M16>& r, const Batch<FMT, U>& bt, Groups<T, ZM>& gs,
                                              GroupRegs<T, FMT, ZM>& gp, const Args& a, const uint8_t* tab, int b,
                                              int b1, int lane) {
#pragma unroll
  for (int i = 0; i < U; ++i) {
    if (b + i >= b1) break;
    const int grp = gs.of(b + i);
    if constexpr (FMT == INT4 || FMT == CB4) {
      if (grp != gs.cur && gs.cur >= 0) fold_group<T, FMT, ZM, M16>(r, gs.scales(gs.cur), gs.zeros(gs.cur), lane >> 2);
      gs.cur = grp;
      if constexpr (FMT == INT4) {
        mma_raw_int4<T, M16>(r, bt.q0[i], bt.xb[i]);
      } else {
        mma_raw_cb4<T, M16>(r, bt.q0[i], tab, 4u * lane, bt.xb[i]);
      }
    } else {
      if (grp != gs.cur) {
        gp.load(gs.scales(grp), gs.zeros(grp), lane);
        gs.cur = grp;
      }
      mma_scaled<T, FMT, ZM, M16>(r, bt.q0[i], bt.q1[i], gp, a, bt.xb[i]);
    }
  }
}

template <typename T, int FMT, int ZM, bool M16, int OCC = 3>
__global__ void __launch_bounds__(GEMV_WARPS * 32, OCC) gemv_kernel(const Args a) {
  // units a batch: 16 code bytes a lane a unit (int8: 32), two batches live, within OCC's registers
  constexpr int UNIT = FMT == INT8 ? 1024 : 512, U = gemv_unroll<OCC>() / (FMT == INT8 ? 2 : 1) / (M16 ? 2 : 1);
  extern __shared__ __align__(16) uint8_t smem_all[];
  uint8_t* const smem = smem_all + gemv_lut_bytes<FMT>();  // the table first (nf4/fp4), the rest after it
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  pdl_launch();
#if QMM_CLUSTERS && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (gridDim.x > 1) cluster_arrive_relaxed();  // "started": waited on before writing into other blocks
#endif
  const int cb = blockIdx.y, bands = a.K / 16, units_n = a.N / 64;
  const int bpw = gemv_bands_per_warp(a.K, gridDim.x);
  const int b0 = min(bands, (static_cast<int>(blockIdx.x) * GEMV_WARPS + warp) * bpw), b1 = min(bands, b0 + bpw);
  const int stride_rows = gemv_group_rows(a, gridDim.x);
  uint8_t* slot = smem + warp * stride_rows * gemv_row_bytes<T, ZM>();
  Groups<T, ZM> gs;
  gs.per_channel = a.group >= a.K, gs.shift = a.group_shift, gs.cur = -1;
  gs.g_lo = gs.of(b0);
  gs.srows = reinterpret_cast<const T*>(slot), gs.zrows = slot + stride_rows * 64 * sizeof(T);
  if (b0 < b1) stage_groups<T, ZM>(slot, stride_rows, a, cb, gs.g_lo, gs.of(b1 - 1) - gs.g_lo + 1, lane);

  GemvAcc<M16> r;
  r.zero();
  GroupRegs<T, FMT, ZM> gp;
  const uint8_t* qsrc = a.qw + (static_cast<size_t>(b0) * units_n + cb) * UNIT + lane * 16;
  const size_t qstride = static_cast<size_t>(units_n) * UNIT;
  const T* xlo = reinterpret_cast<const T*>(a.x) + static_cast<size_t>(g) * a.K + 2 * t;
  const T* xhi = xlo + static_cast<size_t>(8) * a.K;
  const bool has_lo = g < a.M, has_hi = M16 && g + 8 < a.M;
  // two batches in flight: the next one's loads are issued before the current one is multiplied
  Batch<FMT, U> even, odd;
  even.template load_codes<true>(qsrc, qstride, b0, b0, b1);  // the weight is constant: streamed before the wait
  if constexpr (FMT == CB4) {  // while the first codes stream in (and before the wait: no input read)
    fill_byte_table(reinterpret_cast<uint32_t*>(smem_all), a.lut);
    __syncthreads();
  }
  pdl_wait();  // x (and the output) only once the previous kernel on the stream is done
  even.template load_x<T>(xlo, xhi, b0, b1, has_lo, has_hi);
  if constexpr (!(QMM_GEMV_ABLATE & 1)) cp_async_wait<0>();  // this warp's group rows
  __syncwarp();
  for (int b = b0; b < b1; b += 2 * U) {
    odd.template load<T>(qsrc, qstride, xlo, xhi, b + U, b0, b1, has_lo, has_hi);
    compute_batch<T, FMT, ZM, M16, U>(r, even, gs, gp, a, smem_all, b, b1, lane);
    even.template load<T>(qsrc, qstride, xlo, xhi, b + 2 * U, b0, b1, has_lo, has_hi);
    compute_batch<T, FMT, ZM, M16, U>(r, odd, gs, gp, a, smem_all, b + U, b1, lane);
  }
  if constexpr (FMT == INT4 || FMT == CB4) {
    if (gs.cur >= 0) fold_group<T, FMT, ZM, M16>(r, gs.scales(gs.cur), gs.zeros(gs.cur), g);
  }
  __syncthreads();  // every warp is done with its staged groups: the space takes the partial sums
  float* recv = reinterpret_cast<float*>(smem + gemv_work_bytes<T, ZM, M16>(a, gridDim.x));
  gemv_store<T, M16>(r, reinterpret_cast<float*>(smem), recv, a, cb, warp, lane);
}

}  // namespace qmm

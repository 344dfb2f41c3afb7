// out[M, N] = x[M, K] @ W[N, K]^T for a quantized W re-laid into tensor-core units (cuda_layout.py).
//
// A block computes 16*MT rows x BN columns over one split of K, BK rows of K per pipeline stage.
// Per stage, cp.async brings the weight units, the activation tile and the group scales (and
// zeros) into shared memory, STAGES-1 stages ahead of the math, so a block keeps tens of
// kilobytes in flight (what saturating HBM takes). Warps split the stage WN ways along N (one
// 64-column unit each) and WK ways along K; each dequantizes its units straight into B
// fragments (cuda_dequant.cuh) and issues mma.sync m16n8k16 with fp32 accumulators. The WK
// partial sums meet in shared memory; K splits meet in an fp32 workspace where the last block
// to arrive writes the output and re-zeroes its tile, so no memset or cast kernel runs.
#pragma once
#include "cuda_dequant.cuh"

namespace qmm {

struct Args {            // mirrored by cuda_build.QmmArgs (ctypes): keep the order
  const void* x;         // [M, K] activations, T
  const uint8_t* qw;     // re-laid codes [K/16][N/64][unit]
  const void* scales;    // [G, N] T, columns permuted within 64-column blocks
  const void* zeros;     // [G, N] uint8 zero points (ZINT) or T minimums (ZMIN), same permutation
  void* out;             // [M, N] T
  float* ws;             // split-K sums [M, N] fp32: zero on entry, left zero
  int* counters;         // split-K arrivals per output tile: zero on entry, left zero
  int M, N, K;
  int group;             // K rows per scale group (K itself for one group per column)
  int group_shift;       // log2(group), used when group < BK
  int k_split;           // K rows per split, a multiple of BK
  int splits;
  uint32_t lut[8];       // codebook byte tables (CB4)
};

template <typename T, int FMT, int ZM, int MT, int BN, int BK, int WARPS, int STAGES>
struct Tile {
  static constexpr int BITS = FMT == INT8 ? 8 : 4;
  static constexpr int UNIT = 128 * BITS;  // bytes of one 16 x 64 unit; 4 * BITS per lane
  static constexpr int THREADS = WARPS * 32;
  static constexpr int WN = BN / 64, WK = WARPS / WN, ROWS = BK / 16, RPW = ROWS / WK;
  static constexpr int MROWS = 16 * MT;
  static constexpr int A_STRIDE = BK + 8;  // +16 bytes a row: ldmatrix's 8 row reads hit distinct banks
  static constexpr int B_BYTES = ROWS * WN * UNIT;
  static constexpr int A_BYTES = MROWS * A_STRIDE * 2;
  static constexpr int Z_ELEM = ZM == ZINT ? 1 : ZM == ZMIN ? 2 : 0;
  static constexpr int RED_STRIDE = BN + 4;
  static constexpr int BK_ = BK, BN_ = BN, MT_ = MT, FMT_ = FMT, ZM_ = ZM;
  using Type = T;
  static_assert(BN % 64 == 0 && WARPS % WN == 0 && ROWS % WK == 0 && RPW >= 1, "warps must tile the stage");

  __host__ __device__ static int stage_groups(int group) { return group < BK ? BK / group : 1; }
  __host__ __device__ static int stage_bytes(int group) {
    const int sg = stage_groups(group);
    return B_BYTES + A_BYTES + sg * BN * 2 + (sg * BN * Z_ELEM + 15) / 16 * 16;
  }
  __host__ static int smem_bytes(int group) {
    const int pipe = STAGES * stage_bytes(group), red = MROWS * RED_STRIDE * 4;
    return pipe > red ? pipe : red;
  }
};

template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  if constexpr (Pair<T>::MAGIC == 0x64646464u) {
    return to_bits(__floats2half2_rn(a, b));
  } else {
    return to_bits(__floats2bfloat162_rn(a, b));
  }
}

// One unit's B fragments for this lane from its 16 code bytes (q0; int8: and the second half's, q1).
template <typename T, int FMT, int ZM>
__device__ __forceinline__ void fragments_from(uint4 q0, uint4 q1, const GroupRegs<T, FMT, ZM>& gp, const Args& a,
                                               uint32_t b[8][2]) {
  if constexpr (FMT == INT8) {
    const uint32_t q[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
    dequant_int8<T, ZM>(q, gp, b);
  } else if constexpr (FMT == CB4) {
    const uint32_t q[4] = {q0.x, q0.y, q0.z, q0.w};
    dequant_cb4<T>(q, gp, a.lut, b);
  } else {
    const uint32_t q[4] = {q0.x, q0.y, q0.z, q0.w};
    dequant_int4<T, ZM>(q, gp, b);
  }
}

// One unit's B fragments for this lane: codes from `unit` (shared or global memory).
template <typename T, int FMT, int ZM>
__device__ __forceinline__ void unit_fragments(const uint8_t* unit, const GroupRegs<T, FMT, ZM>& gp, const Args& a,
                                               int lane, uint32_t b[8][2]) {
  const uint4 q0 = *reinterpret_cast<const uint4*>(unit + lane * 16);
  const uint4 q1 = FMT == INT8 ? *reinterpret_cast<const uint4*>(unit + 512 + lane * 16) : q0;
  fragments_from<T, FMT, ZM>(q0, q1, gp, a, b);
}

// Which 16-byte chunks of a stage this thread copies, fixed for the whole K loop: pointers are
// made once and advanced by constant strides (address arithmetic was half the loop's instructions).
template <typename C, typename T>
struct LoadPlan {
  static constexpr int RC = C::WN * C::UNIT / 16;  // weight chunks of one k16 band in the block's columns
  static constexpr int B_PER = C::ROWS * RC / C::THREADS, B_ROWS = C::THREADS / RC;
  static constexpr int AC = C::BK_ / 8, A_PER = (C::MROWS * AC + C::THREADS - 1) / C::THREADS, A_ROWS = C::THREADS / AC;
  static_assert(C::THREADS % RC == 0 && (C::ROWS * RC) % C::THREADS == 0, "weight chunks must split evenly");
  static_assert(C::THREADS % AC == 0, "activation chunks must split evenly");
  static_assert((C::BK_ / 16) * (C::BN_ / 8) <= C::THREADS, "one thread per scale chunk, even for groups of 16");
  const uint8_t* b_src;  // this thread's first weight chunk of the current stage
  size_t b_band;         // bytes between the k16 bands of consecutive chunk rounds
  const T* a_src;        // first activation chunk of the current stage
  int a_row;             // its row in the block
  int s_row, s_col;      // the scale (and zero) chunk this thread copies, if s_row < groups per stage
  int tid, rows, sg, k_begin, n0;
  bool per_channel;
  size_t wrow;           // bytes of one 16-row band of units

  // Stage `it` of this block's K range into the shared-memory slot at `base` (cp.async, not waited on).
  __device__ __forceinline__ void load(uint8_t* base, int it, const Args& a) const {
    load_weight(base, it, a);
    load_x(base, it, a);
  }
  __device__ __forceinline__ void load_x(uint8_t* base, int it, const Args& a) const {
    T* as = reinterpret_cast<T*>(base + C::B_BYTES);
#pragma unroll
    for (int i = 0; i < A_PER; ++i) {
      const int row = a_row + i * A_ROWS;
      if (row < rows)
        cp_async16(as + row * C::A_STRIDE + (tid % AC) * 8, a_src + static_cast<size_t>(i) * A_ROWS * a.K + it * C::BK_);
    }
  }
  // The stage's weight codes, scales and zeros: constant, so they may load before pdl_wait().
  __device__ __forceinline__ void load_weight(uint8_t* base, int it, const Args& a) const {
    constexpr int BN = C::BN_, BK = C::BK_, ZM = C::ZM_;
    const uint8_t* wsrc = b_src + static_cast<size_t>(it) * C::ROWS * wrow;
#pragma unroll
    for (int i = 0; i < B_PER; ++i) cp_async16(base + (tid + i * C::THREADS) * 16, wsrc + i * b_band);
    if (s_row < sg) {
      const int k0 = k_begin + it * BK;
      const int g = (per_channel ? 0 : k0 >> a.group_shift) + s_row;
      T* ss = reinterpret_cast<T*>(base + C::B_BYTES + C::A_BYTES);
      cp_async16(ss + s_row * BN + s_col, reinterpret_cast<const T*>(a.scales) + static_cast<size_t>(g) * a.N + n0 + s_col);
      if constexpr (ZM != ZNONE) {
        constexpr int ZB = BN * C::Z_ELEM;  // bytes of one group row of zeros in the block
        uint8_t* zs = reinterpret_cast<uint8_t*>(ss + sg * BN) + s_row * ZB;
        const uint8_t* zsrc = reinterpret_cast<const uint8_t*>(a.zeros) + (static_cast<size_t>(g) * a.N + n0) * C::Z_ELEM;
        // minimums: one chunk beside each scale chunk; uint8 zero points: BN bytes, every other copier
        if (C::Z_ELEM == 2 || s_col % 16 == 0) cp_async16(zs + s_col * C::Z_ELEM, zsrc + s_col * C::Z_ELEM);
      }
    }
  }
};

// One pipeline stage's math for this warp: its 16-row units of the stage, each decoded once into B
// fragments and multiplied with every 16-row block of the activations.
template <typename C, bool ONE_GROUP, typename T = typename C::Type>
__device__ __forceinline__ void compute_stage(float (&acc)[C::MT_][8][4], const uint8_t* base, int sg, const Args& a,
                                              int lane, int wn, int wk, GroupRegs<T, C::FMT_, C::ZM_>& gp) {
  constexpr int MT = C::MT_, BN = C::BN_, FMT = C::FMT_, ZM = C::ZM_;
  const T* as = reinterpret_cast<const T*>(base + C::B_BYTES);
  const T* ss = reinterpret_cast<const T*>(base + C::B_BYTES + C::A_BYTES);
  const uint8_t* zs = reinterpret_cast<const uint8_t*>(ss + sg * BN);
  if constexpr (ONE_GROUP) gp.load(ss + wn * 64, zs + wn * 64 * C::Z_ELEM, lane);
#pragma unroll
  for (int i = 0; i < C::RPW; ++i) {
    const int r = wk * C::RPW + i;
    if constexpr (!ONE_GROUP) {
      const int gr = (r * 16) >> a.group_shift;
      gp.load(ss + gr * BN + wn * 64, zs + (gr * BN + wn * 64) * C::Z_ELEM, lane);
    }
    uint32_t af[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      ldmatrix_x4(af[mt], as + (mt * 16 + (lane & 15)) * C::A_STRIDE + r * 16 + (lane >> 4) * 8);
    uint32_t b[8][2];
    unit_fragments<T, FMT, ZM>(base + (r * C::WN + wn) * C::UNIT, gp, a, lane, b);
#pragma unroll
    for (int s = 0; s < 8; ++s)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) mma16816<T>(acc[mt][s], af[mt], b[s]);
  }
}

// The K-warps' partial sums meet in shared memory, one warp row after another (fp32 [MROWS][BN + 4]).
template <typename C>
__device__ __forceinline__ void reduce_k_warps(const float (&acc)[C::MT_][8][4], float* red, int lane, int wn, int wk) {
  const int g = lane >> 2, t = lane & 3;
  for (int w = 0; w < C::WK; ++w) {
    if (wk == w) {
#pragma unroll
      for (int mt = 0; mt < C::MT_; ++mt)
#pragma unroll
        for (int s = 0; s < 8; ++s) {
          float2* p0 = reinterpret_cast<float2*>(red + (mt * 16 + g) * C::RED_STRIDE + wn * 64 + 8 * s + 2 * t);
          float2* p1 = p0 + 4 * C::RED_STRIDE;  // row g + 8 (float2 pointer: 8 rows = 4 * stride float2s)
          float2 v0 = make_float2(acc[mt][s][0], acc[mt][s][1]), v1 = make_float2(acc[mt][s][2], acc[mt][s][3]);
          if (w > 0) {
            v0.x += p0->x, v0.y += p0->y, v1.x += p1->x, v1.y += p1->y;
          }
          *p0 = v0;
          *p1 = v1;
        }
    }
    __syncthreads();
  }
}

// The block's sums to the output; with K splits, into the fp32 workspace, where the last block to
// arrive at this tile writes the output and leaves the workspace and its counter at zero again.
template <typename C, typename T>
__device__ __forceinline__ void store_tile(const float* red, const Args& a, int tid, int m0, int n0, int rows) {
  __shared__ int last_arrival;
  constexpr int HALF = C::BN_ / 2;
  for (int i = tid; i < rows * HALF; i += C::THREADS) {
    const int m = i / HALF, c = (i % HALF) * 2;
    const float2 v = *reinterpret_cast<const float2*>(red + m * C::RED_STRIDE + c);
    const size_t o = static_cast<size_t>(m0 + m) * a.N + n0 + c;
    if (a.splits == 1) {
      *reinterpret_cast<uint32_t*>(reinterpret_cast<T*>(a.out) + o) = pack2<T>(v.x, v.y);
    } else {
      red_add(a.ws + o, v.x);
      red_add(a.ws + o + 1, v.y);
    }
  }
  if (a.splits == 1) return;
  __syncthreads();
  int* counter = a.counters + blockIdx.x * gridDim.y + blockIdx.y;
  if (tid == 0) last_arrival = arrive_acq_rel(counter) == a.splits - 1;  // after every thread's adds
  __syncthreads();
  if (!last_arrival) return;
  for (int i = tid; i < rows * HALF; i += C::THREADS) {
    const int m = i / HALF, c = (i % HALF) * 2;
    const size_t o = static_cast<size_t>(m0 + m) * a.N + n0 + c;
    const float2 v = __ldcg(reinterpret_cast<const float2*>(a.ws + o));
    *reinterpret_cast<uint32_t*>(reinterpret_cast<T*>(a.out) + o) = pack2<T>(v.x, v.y);
    __stcg(reinterpret_cast<float2*>(a.ws + o), make_float2(0.f, 0.f));
  }
  if (tid == 0) *counter = 0;
}

// ONE_GROUP: every stage lies inside one scale group (group >= BK), so a warp reads its group values
// once a stage, before the row loop; otherwise every 16-row unit reads its own. Either way the row
// loop has no branch, so the compiler can start the next unit's shared-memory loads early.
// 16-row blocks cap registers for 3 blocks (24 warps) per SM: the kernel is latency-bound there.
template <typename T, int FMT, int ZM, int MT, int BN, int BK, int WARPS, int STAGES, bool ONE_GROUP>
__global__ void __launch_bounds__(WARPS * 32, MT == 1 ? 3 : 1) qmm_kernel(const Args a) {
  using C = Tile<T, FMT, ZM, MT, BN, BK, WARPS, STAGES>;
  using P = LoadPlan<C, T>;
  extern __shared__ __align__(16) uint8_t smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wn = warp % C::WN, wk = warp / C::WN;
  const int m0 = blockIdx.x * C::MROWS, n0 = blockIdx.y * BN;  // m fastest: row blocks share weight tiles in L2
  const int rows = min(C::MROWS, a.M - m0);
  const int k_begin = blockIdx.z * a.k_split;
  const int iters = max(0, min(a.K - k_begin, a.k_split)) / BK;
  const int sg = C::stage_groups(a.group), stage_bytes = C::stage_bytes(a.group);
  const bool per_channel = a.group >= a.K;
  const size_t wrow = static_cast<size_t>(a.N) * 2 * C::BITS;  // bytes of one 16-row band of units

  P plan;
  plan.b_src = a.qw + static_cast<size_t>(k_begin / 16 + tid / P::RC) * wrow + static_cast<size_t>(n0) * 2 * C::BITS +
               (tid % P::RC) * 16;
  plan.b_band = P::B_ROWS * wrow;
  plan.a_row = tid / P::AC;
  plan.a_src = reinterpret_cast<const T*>(a.x) + static_cast<size_t>(m0 + plan.a_row) * a.K + k_begin + (tid % P::AC) * 8;
  plan.s_row = tid / (BN / 8);
  plan.s_col = (tid % (BN / 8)) * 8;
  plan.tid = tid, plan.rows = rows, plan.sg = sg, plan.k_begin = k_begin, plan.n0 = n0;
  plan.per_channel = per_channel, plan.wrow = wrow;

  // Rows past M are never loaded; ldmatrix reads them as the tile's padding, so zero them once.
  for (int st = 0; st < STAGES; ++st) {
    uint4* pad = reinterpret_cast<uint4*>(smem + st * stage_bytes + C::B_BYTES + rows * C::A_STRIDE * 2);
    for (int i = tid; i < (C::MROWS - rows) * C::A_STRIDE / 8; i += C::THREADS) pad[i] = make_uint4(0, 0, 0, 0);
  }


  float acc[MT][8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int s = 0; s < 8; ++s)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][s][i] = 0.f;

  // The first stages' weight before the wait (it overlaps the previous kernel's tail), their x after;
  // commit group 0 holds all of that weight, so "stage s landed" (group s) still means what it did.
  pdl_launch();
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s)
    if (s < iters) plan.load_weight(smem + s * stage_bytes, s, a);
  pdl_wait();
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < iters) plan.load_x(smem + s * stage_bytes, s, a);
    cp_async_commit();
  }
  GroupRegs<T, FMT, ZM> gp;
  for (int it = 0; it < iters; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage `it` landed for every thread; slot (it - 1) % STAGES is free again
    const int next = it + STAGES - 1;
    if (next < iters) plan.load(smem + (next % STAGES) * stage_bytes, next, a);
    cp_async_commit();
    compute_stage<C, ONE_GROUP>(acc, smem + (it % STAGES) * stage_bytes, sg, a, lane, wn, wk, gp);
  }
  cp_async_wait<0>();
  __syncthreads();  // the pipeline's shared memory becomes the reduction buffer

  reduce_k_warps<C>(acc, reinterpret_cast<float*>(smem), lane, wn, wk);
  store_tile<C, T>(reinterpret_cast<const float*>(smem), a, tid, m0, n0, rows);
}

// The whole weight as T [N, K] (one warp per unit): for many rows, where cuBLAS on the
// dequantized weight beats the fused kernel, and for checking the layout on the device.
template <typename T, int FMT, int ZM>
__global__ void dequant_kernel(const Args a, T* w) {
  constexpr int BITS = FMT == INT8 ? 8 : 4, UNIT = 128 * BITS;
  const int lane = threadIdx.x & 31;
  const int unit = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int units_n = a.N / 64;
  if (unit >= (a.K / 16) * units_n) return;
  const int band = unit / units_n, ub = unit % units_n;
  const int grp = band * 16 / a.group;
  const T* srow = reinterpret_cast<const T*>(a.scales) + static_cast<size_t>(grp) * a.N + ub * 64;
  const int ze = ZM == ZINT ? 1 : 2;
  const uint8_t* zrow = reinterpret_cast<const uint8_t*>(a.zeros) + (static_cast<size_t>(grp) * a.N + ub * 64) * ze;
  GroupRegs<T, FMT, ZM> gp;
  gp.load(srow, zrow, lane);
  uint32_t b[8][2];
  unit_fragments<T, FMT, ZM>(a.qw + static_cast<size_t>(unit) * UNIT, gp, a, lane, b);
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int s = 0; s < 8; ++s)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const size_t n = static_cast<size_t>(ub) * 64 + 8 * s + g, k = band * 16 + 2 * t + 8 * r;
      *reinterpret_cast<uint32_t*>(w + n * a.K + k) = b[s][r];
    }
}

}  // namespace qmm

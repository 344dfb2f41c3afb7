// out[M, N] = x[M, K] @ W[N, K]^T with Hopper's wgmma, for 16 to 256 rows (int4 and 4-bit codebooks).
//
// Computed transposed, out^T = W x^T, so that the weight is wgmma's A operand and comes from
// registers: a unit of the re-laid weight (16 k x 64 columns, cuda_layout.py) is exactly one
// m64k16 A tile, and warp w of a warpgroup decodes word w of each lane's 16 code bytes (subtiles
// 2w, 2w + 1) straight into its A fragment. The activations are the B operand (N = MN rows of x,
// 16..256), read by the tensor cores from shared memory: one copy per block serves every warp,
// where mma.sync made each warp load its own (the shared-memory traffic that capped the mma
// kernel at 64 rows). A block is WG warpgroups (64 columns each) x MN rows x one K split.
//
// Per stage, cp.async brings x, the codes and the group scales STAGES - 1 stages ahead. x lies in
// 128-byte-swizzled rows (64 k a row, 16-byte chunk c of row m at c ^ (m % 8)): the unswizzled
// layout made the tensor cores' reads of x conflict 4-8 ways (measured: 0.2 of the mma kernel's
// speed at 256 rows). While the tensor cores run stage i, the warps decode stage i + 1 into the
// other register buffer; to 64 rows stage i's wgmmas also stay in flight through the barrier and
// the next copies' issue (WgTile::IN_FLIGHT). Few rows make each wgmma short, so consecutive 16-k
// bands accumulate into NACC independent sets (summed at the end): a chain of dependent wgmmas
// costs their latency, not their work. K splits meet like the mma kernel's (store_tile): fp32 workspace, last block writes.
#pragma once
#include "cuda_qmm.cuh"
#include "cuda_wgmma.cuh"

#ifndef QMM_WG_INFLIGHT
#define QMM_WG_INFLIGHT -1  // the stage loop by rows (WgTile::IN_FLIGHT); 0 / 1: one loop for all (A/B timing)
#endif

namespace qmm {

#if QMM_WGMMA
template <typename T, int FMT, int ZM, int MN, int WG, int BK, int STAGES>
struct WgTile {
  static constexpr int THREADS = WG * 128, BN = 64 * WG, ROWS = BK / 16, UNIT = 512;
  static constexpr int X_BYTES = MN * BK * 2, W_BYTES = ROWS * WG * UNIT;
  static constexpr int Z_ELEM = ZM == ZINT ? 1 : ZM == ZMIN ? 2 : 0;
  static constexpr int RED_STRIDE = BN + 4;
  static constexpr int BN_ = BN, FMT_ = FMT, ZM_ = ZM, MN_ = MN, WG_ = WG;
  static constexpr int NACC = MN <= 32 ? 4 : MN == 64 ? 2 : 1;  // independent accumulator sets
  // Leave one stage's wgmmas in flight while the next is loaded and decoded, to 64 rows (up to 11 %
  // faster on the H200); drain each stage from 128 (128-row blocks 2-7 % faster so, 256-row ones
  // within noise): benchmarks/results/gpu_wgmma_pipeline.md.
  static constexpr bool IN_FLIGHT = QMM_WG_INFLIGHT < 0 ? MN <= 64 : QMM_WG_INFLIGHT != 0;
  static constexpr int SWZ = 1024;  // a swizzle atom: 8 rows of 128 bytes, aligned to its size
  static_assert(MN % 16 == 0 && MN <= 256 && BK % 64 == 0 && ROWS % NACC == 0, "wgmma tile shape");

  __host__ __device__ static int stage_groups(int group) { return group < BK ? BK / group : 1; }
  __host__ __device__ static int stage_bytes(int group) {
    const int sg = stage_groups(group);
    return (X_BYTES + W_BYTES + sg * BN * 2 + sg * BN * Z_ELEM + SWZ - 1) / SWZ * SWZ;
  }
  __host__ static int smem_bytes(int group) {  // + one atom: the dynamic base is aligned at run time
    const int pipe = STAGES * stage_bytes(group), red = MN * RED_STRIDE * 4;
    return (pipe > red ? pipe : red) + SWZ;
  }
  // Byte offset of x's 16-byte chunk kc (k = 8 kc .. 8 kc + 7) of row m in a stage: 64-k column
  // blocks of MN rows x 128 bytes, the chunk index XORed with m % 8 (the descriptor's 128B swizzle).
  __device__ static int x_offset(int m, int kc) {
    return (kc >> 3) * MN * 128 + m * 128 + (((kc & 7) ^ (m & 7)) << 4);
  }
};

// Which 16-byte chunks of a stage this thread copies, fixed for the whole K loop: made once, then
// advanced by constant strides (a loop over chunks from `tid` compiled to ~250 instructions a stage).
// THREADS is a multiple of x's chunks per row and of 4 bands of codes, so a thread's chunks keep
// their column (and x's swizzle phase, rows 8 apart) from one round to the next.
template <typename C, typename T>
struct WgPlan {
  static constexpr int BK = C::ROWS * 16, KC = BK / 8, XR = C::THREADS / KC;  // x rows a round
  static constexpr int X_PER = (C::MN_ + XR - 1) / XR, W_PER = C::W_BYTES / 16 / C::THREADS;  // rows past MN: none
  static_assert(C::THREADS % KC == 0 && XR % 8 == 0 && (X_PER == 1 || C::MN_ % XR == 0), "x chunks");
  static_assert(W_PER * C::THREADS * 16 == C::W_BYTES, "code chunks");
  const T* x_src;        // this thread's first x chunk at stage 0
  int x_dst, x_row;      // its offset in a stage, its row
  const uint8_t* w_src;  // its first code chunk at stage 0
  size_t w_round;        // bytes between its code chunks of one stage (4 bands)
  int tid, rows, n0, k_begin, sg;
  int s_row, s_col;      // the scale chunk it copies (if s_row < sg: a stage has <= THREADS of them)
  int z_row, z_off;      // the zero chunk it copies (if z_row < sg)
  bool per_channel;

  __device__ __forceinline__ WgPlan(const Args& a, int tid_, int m0, int n0_, int rows_, int k_begin_)
      : tid(tid_), rows(rows_), n0(n0_), k_begin(k_begin_) {
    constexpr int ZC = C::BN * (C::Z_ELEM ? C::Z_ELEM : 1) / 16;  // zero chunks of one group row
    static_assert(BK / 16 * (C::BN / 8) <= C::THREADS && BK / 16 * ZC <= C::THREADS, "one scale chunk a thread");
    sg = C::stage_groups(a.group), per_channel = a.group >= a.K;
    s_row = tid / (C::BN / 8), s_col = (tid % (C::BN / 8)) * 8;
    z_row = tid / ZC, z_off = (tid % ZC) * 16;
    const int kc = tid % KC;
    x_row = tid / KC;
    x_src = reinterpret_cast<const T*>(a.x) + static_cast<size_t>(m0 + x_row) * a.K + k_begin + kc * 8;
    x_dst = C::x_offset(x_row, kc);
    const int units_n = a.N / 64, r = tid / (C::WG_ * 32), u = (tid / 32) % C::WG_;
    w_src = a.qw + ((static_cast<size_t>(k_begin / 16 + r) * units_n + n0 / 64 + u) * 32 + tid % 32) * 16;
    w_round = static_cast<size_t>(4) * units_n * C::UNIT;
  }

  // Stage `it` into the slot at `base` (cp.async, not waited on).
  __device__ __forceinline__ void load(uint8_t* base, int it, const Args& a) const {
    load_x(base, it, a);
    load_weight(base, it, a);
  }
  __device__ __forceinline__ void load_x(uint8_t* base, int it, const Args& a) const {
#pragma unroll
    for (int i = 0; i < X_PER; ++i)
      if (x_row + i * XR < rows)
        cp_async16(base + x_dst + i * XR * 128, x_src + static_cast<size_t>(i) * XR * a.K + it * BK);
  }
  // The stage's weight codes, scales and zeros: constant, so they may load before pdl_wait().
  __device__ __forceinline__ void load_weight(uint8_t* base, int it, const Args& a) const {
    constexpr int BN = C::BN;
    const uint8_t* wsrc = w_src + static_cast<size_t>(it) * (C::ROWS / 4) * w_round;
    uint8_t* ws = base + C::X_BYTES;
#pragma unroll
    for (int i = 0; i < W_PER; ++i) cp_async16(ws + (tid + i * C::THREADS) * 16, wsrc + i * w_round);
    const int g0 = per_channel ? 0 : (k_begin + it * BK) >> a.group_shift;
    T* ss = reinterpret_cast<T*>(ws + C::W_BYTES);
    if (s_row < sg)
      cp_async16(ss + s_row * BN + s_col,
                 reinterpret_cast<const T*>(a.scales) + static_cast<size_t>(g0 + s_row) * a.N + n0 + s_col);
    if constexpr (C::ZM_ != ZNONE) {
      constexpr int ZB = BN * C::Z_ELEM;  // bytes of one group row of zeros in the block
      uint8_t* zs = reinterpret_cast<uint8_t*>(ss + sg * BN);
      if (z_row < sg)
        cp_async16(zs + z_row * ZB + z_off,
                   reinterpret_cast<const uint8_t*>(a.zeros) + (static_cast<size_t>(g0 + z_row) * a.N + n0) * C::Z_ELEM + z_off);
    }
  }
};

// Warp w of warpgroup `wg` decodes its A fragments of every 16-row band of the stage.
template <typename C, bool ONE_GROUP, typename T>
__device__ __forceinline__ void wg_decode(uint32_t (&af)[C::ROWS][4], const uint8_t* base, int sg, const Args& a,
                                          int lane, int wg, int w) {
  constexpr int BN = C::BN;
  const uint8_t* ws = base + C::X_BYTES;
  const T* ss = reinterpret_cast<const T*>(ws + C::W_BYTES);
  const uint8_t* zs = reinterpret_cast<const uint8_t*>(ss + sg * BN);
  GroupRegs<T, C::FMT_, C::ZM_> gp;
  if constexpr (ONE_GROUP) gp.load_pair(ss + wg * 64, zs + wg * 64 * C::Z_ELEM, lane, w);
#pragma unroll
  for (int r = 0; r < C::ROWS; ++r) {
    if constexpr (!ONE_GROUP) {
      const int gr = (r * 16) >> a.group_shift;
      gp.load_pair(ss + gr * BN + wg * 64, zs + (gr * BN + wg * 64) * C::Z_ELEM, lane, w);
    }
    const uint32_t q = *reinterpret_cast<const uint32_t*>(ws + (r * C::WG_ + wg) * C::UNIT + lane * 16 + 4 * w);
    uint32_t v[4];
    if constexpr (C::FMT_ == CB4) {
      cb4_word<T>(q, gp, a.lut, 0, v);
    } else {
      int4_word<T, C::ZM_>(q, gp, 0, v);
    }
    af[r][0] = v[0], af[r][1] = v[2], af[r][2] = v[1], af[r][3] = v[3];  // rows g / g + 8, k 2t / 2t + 8
  }
}

// Pins the accumulators to their registers across an asm boundary: with a wgmma still in flight
// the compiler must not copy or re-define them (ptxas then serializes every wgmma, warning C7515).
template <typename C>
__device__ __forceinline__ void fence_operands(float (&acc)[C::NACC][C::MN_ / 2]) {
#pragma unroll
  for (int j = 0; j < C::NACC; ++j)
#pragma unroll
    for (int i = 0; i < C::MN_ / 2; ++i) asm volatile("" : "+f"(acc[j][i])::"memory");
}

template <typename C>
__device__ __forceinline__ void zero_acc(float (&acc)[C::NACC][C::MN_ / 2]) {
#pragma unroll
  for (int j = 0; j < C::NACC; ++j)
#pragma unroll
    for (int i = 0; i < C::MN_ / 2; ++i) acc[j][i] = 0.f;
}

// The stage's wgmmas: band r reads x's columns 16r..16r+15, 32 bytes into a row of its 64-k block
// (the start address moves inside the swizzle atom; the hardware swizzles the absolute address).
template <typename C, typename T>
__device__ __forceinline__ void wg_issue(float (&acc)[C::NACC][C::MN_ / 2], const uint32_t (&af)[C::ROWS][4],
                                         const uint8_t* base, bool first) {
  const uint64_t desc = smem_desc_sw128(base, 8 * 128);  // 8-row groups 1024 bytes apart
  fence_operands<C>(acc);
  wgmma_fence();
#pragma unroll
  for (int r = 0; r < C::ROWS; ++r) {
    const int offset = (r >> 2) * C::MN_ * 128 + (r & 3) * 32;
    // the first stage's first band of each set writes it (scale-d 0): no zeroing instruction defines
    // an accumulator that a wgmma still in flight may write, which would serialize every wgmma
    Wgmma<C::MN_, T>::run(acc[r % C::NACC], af[r], desc + static_cast<uint64_t>(offset >> 4),
                          !(first && r < C::NACC));
  }
  wgmma_commit();
  fence_operands<C>(acc);
}

// BLOCKS: blocks of this kernel an SM's registers must hold (cuda_qmm.cu WgShape).
template <typename T, int FMT, int ZM, int MN, int WG, int BK, int STAGES, int BLOCKS, bool ONE_GROUP>
__global__ void __launch_bounds__(WG * 128, BLOCKS) wg_kernel(const Args a) {
  using C = WgTile<T, FMT, ZM, MN, WG, BK, STAGES>;
  extern __shared__ __align__(128) uint8_t wg_smem[];
  uint8_t* smem = wg_smem + ((C::SWZ - (smem_addr(wg_smem) & (C::SWZ - 1))) & (C::SWZ - 1));
  const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, w = (tid >> 5) & 3;
  const int m0 = blockIdx.x * MN, n0 = blockIdx.y * C::BN;
  const int rows = min(MN, a.M - m0);
  const int k_begin = blockIdx.z * a.k_split;
  const int iters = max(0, min(a.K - k_begin, a.k_split)) / BK;
  const int sg = C::stage_groups(a.group), stage_bytes = C::stage_bytes(a.group);

  // Rows of x past M are never loaded; the tensor cores read them, so zero them once.
  for (int st = 0; st < STAGES; ++st)
    for (int c = tid; c < (MN - rows) * (BK / 8); c += C::THREADS) {
      const int m = rows + c / (BK / 8), kc = c % (BK / 8);
      *reinterpret_cast<uint4*>(smem + st * stage_bytes + C::x_offset(m, kc)) = make_uint4(0, 0, 0, 0);
    }
  const WgPlan<C, T> plan(a, tid, m0, n0, rows, k_begin);
  float acc[C::NACC][MN / 2];  // IN_FLIGHT: first written by the first stage's wgmmas (scale-d 0)
  if constexpr (!C::IN_FLIGHT) zero_acc<C>(acc);

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
  cp_async_wait<STAGES - 2>();
  fence_proxy_async();
  __syncthreads();
  uint32_t af0[C::ROWS][4], af1[C::ROWS][4];  // two buffers: decode stage i + 1 while stage i multiplies
  if (iters > 0) wg_decode<C, ONE_GROUP, T>(af0, smem, sg, a, lane, wg, w);

  // One stage. IN_FLIGHT: issue stage it's wgmmas, wait for stage it - 1's (its A registers and x slot
  // become free), then one barrier that both frees that slot for every warpgroup and publishes stage
  // it + 1's landed copies; refill the slot, decode stage it + 1. The tensor cores keep working through
  // the barrier, the copies' issue and the decode. Otherwise (drained): loads STAGES - 1 ahead, this
  // stage's wgmmas, the next stage's decode, then a wait for all of this stage's wgmmas and a barrier
  // before the slot is refilled.
  auto step = [&](int it, const uint32_t (&cur)[C::ROWS][4], uint32_t (&nxt)[C::ROWS][4]) {
    const int ahead = it + STAGES - 1;
    uint8_t* next_slot = smem + ((it + 1) % STAGES) * stage_bytes;
    if constexpr (C::IN_FLIGHT) {
      static_assert(STAGES >= 3, "the slot refilled at stage it is stage it - 1's");
      wg_issue<C, T>(acc, cur, smem + (it % STAGES) * stage_bytes, it == 0);
      wgmma_wait<1>();
      fence_operands<C>(acc);
      cp_async_wait<STAGES - 3>();  // stages to it + 1 landed (it + STAGES - 2 committed so far)
      fence_proxy_async();
      __syncthreads();
      if (ahead < iters) plan.load(smem + (ahead % STAGES) * stage_bytes, ahead, a);
      cp_async_commit();
      if (it + 1 < iters) wg_decode<C, ONE_GROUP, T>(nxt, next_slot, sg, a, lane, wg, w);
    } else {
      if (ahead < iters) plan.load(smem + (ahead % STAGES) * stage_bytes, ahead, a);
      cp_async_commit();
      wg_issue<C, T>(acc, cur, smem + (it % STAGES) * stage_bytes, false);
      cp_async_wait<STAGES - 2>();
      fence_proxy_async();
      __syncthreads();
      if (it + 1 < iters) wg_decode<C, ONE_GROUP, T>(nxt, next_slot, sg, a, lane, wg, w);
      wgmma_wait<0>();
      __syncthreads();
    }
  };
  for (int it = 0; it < iters; it += 2) {
    step(it, af0, af1);
    if (it + 1 < iters) step(it + 1, af1, af0);
  }
  wgmma_wait<0>();
  if constexpr (C::IN_FLIGHT)
    if (iters == 0) zero_acc<C>(acc);  // an empty K split (cuda_kernel.py makes none) adds nothing
  cp_async_wait<0>();
  __syncthreads();  // the pipeline's shared memory becomes the reduction buffer

#pragma unroll
  for (int j = 1; j < C::NACC; ++j)
#pragma unroll
    for (int i = 0; i < MN / 2; ++i) acc[0][i] += acc[j][i];
  float* red = reinterpret_cast<float*>(smem);
  const int g = lane >> 2, t = lane & 3, n = wg * 64 + 16 * w + g;
#pragma unroll
  for (int i = 0; i < MN / 8; ++i) {
    const int m = 8 * i + 2 * t;
    red[m * C::RED_STRIDE + n] = acc[0][4 * i];
    red[(m + 1) * C::RED_STRIDE + n] = acc[0][4 * i + 1];
    red[m * C::RED_STRIDE + n + 8] = acc[0][4 * i + 2];
    red[(m + 1) * C::RED_STRIDE + n + 8] = acc[0][4 * i + 3];
  }
  __syncthreads();
  store_tile<C, T>(red, a, tid, m0, n0, rows);
}
#endif  // QMM_WGMMA

}  // namespace qmm

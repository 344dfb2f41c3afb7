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
// Per stage, cp.async brings x (in 8 x 16-byte core matrices, the descriptor's no-swizzle layout),
// the codes and the group scales STAGES - 1 stages ahead. While the tensor cores run stage i,
// the warps decode stage i + 1 into the other register buffer. K splits meet like the mma
// kernel's (store_tile): fp32 workspace, last block to arrive writes the output.
#pragma once
#include "cuda_qmm.cuh"
#include "cuda_wgmma.cuh"

namespace qmm {

#if QMM_WGMMA
template <typename T, int FMT, int ZM, int MN, int WG, int BK, int STAGES>
struct WgTile {
  static constexpr int THREADS = WG * 128, BN = 64 * WG, ROWS = BK / 16, UNIT = 512;
  static constexpr int X_BYTES = MN * BK * 2, W_BYTES = ROWS * WG * UNIT;
  static constexpr int Z_ELEM = ZM == ZINT ? 1 : ZM == ZMIN ? 2 : 0;
  static constexpr int RED_STRIDE = BN + 4;
  static constexpr int BN_ = BN, FMT_ = FMT, ZM_ = ZM, MN_ = MN, WG_ = WG;
  static_assert(MN % 16 == 0 && MN <= 256 && BK % 64 == 0, "wgmma tile shape");

  __host__ __device__ static int stage_groups(int group) { return group < BK ? BK / group : 1; }
  __host__ __device__ static int stage_bytes(int group) {
    const int sg = stage_groups(group);
    return (X_BYTES + W_BYTES + sg * BN * 2 + sg * BN * Z_ELEM + 127) / 128 * 128;
  }
  __host__ static int smem_bytes(int group) {
    const int pipe = STAGES * stage_bytes(group), red = MN * RED_STRIDE * 4;
    return pipe > red ? pipe : red;
  }
};

// Stage `it` of the block's K range into the slot at `base` (cp.async, not waited on).
template <typename C, typename T>
__device__ __forceinline__ void wg_load(uint8_t* base, int it, const Args& a, int tid, int m0, int n0, int rows,
                                        int k_begin) {
  constexpr int BK = C::ROWS * 16, BN = C::BN, KC = BK / 8;
  const int k0 = k_begin + it * BK;
#pragma unroll
  for (int c = tid; c < C::X_BYTES / 16; c += C::THREADS) {  // x row m, 8 columns kc -> its core matrix row
    const int m = c / KC, kc = c % KC;
    if (m < rows)
      cp_async16(base + ((m >> 3) * KC + kc) * 128 + (m & 7) * 16,
                 reinterpret_cast<const T*>(a.x) + static_cast<size_t>(m0 + m) * a.K + k0 + kc * 8);
  }
  const int units_n = a.N / 64;
  uint8_t* ws = base + C::X_BYTES;
#pragma unroll
  for (int c = tid; c < C::W_BYTES / 16; c += C::THREADS) {  // [band r][unit u][lane chunk]
    const int r = c / (C::WG_ * 32), u = (c / 32) % C::WG_, l = c % 32;
    cp_async16(ws + c * 16, a.qw + ((static_cast<size_t>(k0 / 16 + r) * units_n + n0 / 64 + u) * 32 + l) * 16);
  }
  const int sg = C::stage_groups(a.group), g0 = a.group >= a.K ? 0 : k0 >> a.group_shift;
  T* ss = reinterpret_cast<T*>(ws + C::W_BYTES);
  for (int c = tid; c < sg * BN / 8; c += C::THREADS) {
    const int row = c / (BN / 8), col = (c % (BN / 8)) * 8;
    cp_async16(ss + row * BN + col, reinterpret_cast<const T*>(a.scales) + static_cast<size_t>(g0 + row) * a.N + n0 + col);
  }
  if constexpr (C::ZM_ != ZNONE) {
    constexpr int ZB = BN * C::Z_ELEM;  // bytes of one group row of zeros in the block
    uint8_t* zs = reinterpret_cast<uint8_t*>(ss + sg * BN);
    for (int c = tid; c < sg * ZB / 16; c += C::THREADS) {
      const int row = c / (ZB / 16), off = (c % (ZB / 16)) * 16;
      cp_async16(zs + row * ZB + off,
                 reinterpret_cast<const uint8_t*>(a.zeros) + (static_cast<size_t>(g0 + row) * a.N + n0) * C::Z_ELEM + off);
    }
  }
}

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

// The stage's wgmmas: band r reads x's columns 16r..16r+15, two core matrices along K (256 bytes).
template <typename C, typename T>
__device__ __forceinline__ void wg_issue(float (&acc)[C::MN_ / 2], const uint32_t (&af)[C::ROWS][4],
                                         const uint8_t* base, bool swap) {
  constexpr uint32_t LEAD = 128, STRIDE = C::ROWS * 256;  // K-neighbour / N-neighbour core matrices
  const uint64_t desc = swap ? smem_desc(base, STRIDE, LEAD) : smem_desc(base, LEAD, STRIDE);
  wgmma_fence();
#pragma unroll
  for (int r = 0; r < C::ROWS; ++r) Wgmma<C::MN_, T>::run(acc, af[r], desc + static_cast<uint64_t>(r * 16));
  wgmma_commit();
}

template <typename T, int FMT, int ZM, int MN, int WG, int BK, int STAGES, bool ONE_GROUP>
__global__ void __launch_bounds__(WG * 128, 1) wg_kernel(const Args a) {
  using C = WgTile<T, FMT, ZM, MN, WG, BK, STAGES>;
  extern __shared__ __align__(128) uint8_t wg_smem[];
  uint8_t* smem = wg_smem;
  const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, w = (tid >> 5) & 3;
  const int m0 = blockIdx.x * MN, n0 = blockIdx.y * C::BN;
  const int rows = min(MN, a.M - m0);
  const int k_begin = blockIdx.z * a.k_split;
  const int iters = max(0, min(a.K - k_begin, a.k_split)) / BK;
  const int sg = C::stage_groups(a.group), stage_bytes = C::stage_bytes(a.group);
  const bool swap = a.desc_swap != 0;

  // Rows of x past M are never loaded; the tensor cores read them, so zero them once.
  for (int st = 0; st < STAGES; ++st)
    for (int c = tid; c < (MN - rows) * (BK / 8); c += C::THREADS) {
      const int m = rows + c / (BK / 8), kc = c % (BK / 8);
      *reinterpret_cast<uint4*>(smem + st * stage_bytes + ((m >> 3) * (BK / 8) + kc) * 128 + (m & 7) * 16) =
          make_uint4(0, 0, 0, 0);
    }
  float acc[MN / 2];
#pragma unroll
  for (int i = 0; i < MN / 2; ++i) acc[i] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < iters) wg_load<C, T>(smem + s * stage_bytes, s, a, tid, m0, n0, rows, k_begin);
    cp_async_commit();
  }
  cp_async_wait<STAGES - 2>();
  fence_proxy_async();
  __syncthreads();
  uint32_t af0[C::ROWS][4], af1[C::ROWS][4];  // two buffers: decode stage i + 1 while stage i multiplies
  if (iters > 0) wg_decode<C, ONE_GROUP, T>(af0, smem, sg, a, lane, wg, w);

  // One stage: loads STAGES - 1 ahead, this stage's wgmmas, the next stage's decode, then the wait
  // that frees this stage's slot (the barrier: every warpgroup's wgmmas read the same x tile).
  auto step = [&](int it, const uint32_t (&cur)[C::ROWS][4], uint32_t (&nxt)[C::ROWS][4]) {
    const int ahead = it + STAGES - 1;
    if (ahead < iters) wg_load<C, T>(smem + (ahead % STAGES) * stage_bytes, ahead, a, tid, m0, n0, rows, k_begin);
    cp_async_commit();
    wg_issue<C, T>(acc, cur, smem + (it % STAGES) * stage_bytes, swap);
    cp_async_wait<STAGES - 2>();
    fence_proxy_async();
    __syncthreads();
    if (it + 1 < iters) wg_decode<C, ONE_GROUP, T>(nxt, smem + ((it + 1) % STAGES) * stage_bytes, sg, a, lane, wg, w);
    wgmma_wait<0>();
    __syncthreads();
  };
  for (int it = 0; it < iters; it += 2) {
    step(it, af0, af1);
    if (it + 1 < iters) step(it + 1, af1, af0);
  }
  cp_async_wait<0>();
  __syncthreads();  // the pipeline's shared memory becomes the reduction buffer

  float* red = reinterpret_cast<float*>(smem);
  const int g = lane >> 2, t = lane & 3, n = wg * 64 + 16 * w + g;
#pragma unroll
  for (int i = 0; i < MN / 8; ++i) {
    const int m = 8 * i + 2 * t;
    red[m * C::RED_STRIDE + n] = acc[4 * i];
    red[(m + 1) * C::RED_STRIDE + n] = acc[4 * i + 1];
    red[m * C::RED_STRIDE + n + 8] = acc[4 * i + 2];
    red[(m + 1) * C::RED_STRIDE + n + 8] = acc[4 * i + 3];
  }
  __syncthreads();
  store_tile<C, T>(red, a, tid, m0, n0, rows);
}
#endif  // QMM_WGMMA

}  // namespace qmm

// The few-row kernel's partial sums to the output (cuda_gemv.cuh): one block along K writes them; K
// split over blocks without a cluster meet in the split-K workspace; in a thread-block cluster the
// warps' sums meet in distributed shared memory with one cluster barrier.
#pragma once
#include "cuda_ptx.cuh"
#include "cuda_qmm.cuh"

#if QMM_CLUSTERS
#include <cooperative_groups.h>
#endif

namespace qmm {

// Outputs of a cluster's column block that each block sums and writes (its share); the receive area
// where the cluster's warps put their partial sums of them is [cluster x warps][share] fp32. A power of
// two, so that a warp finds an output's owner by a shift, not a division (the last blocks may own fewer).
__host__ __device__ inline int gemv_share(const Args& a, int cluster) {
  const int even = (a.M * 64 + cluster - 1) / cluster;
  int share = 1;
  while (share < even) share <<= 1;
  return share;
}

#if QMM_CLUSTERS && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void cluster_arrive_relaxed() { asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"); }
#endif

// Output o summed over this block's warp slots, in warp order (deterministic).
template <int WARPS, int ROWS>
__device__ __forceinline__ float warp_total(const float* red, int o) {
  float v = red[o];
#pragma unroll
  for (int w = 1; w < WARPS; ++w) v += red[w * ROWS * 64 + o];
  return v;
}

template <typename T>
__device__ __forceinline__ void store_out(const Args& a, int cb, int o, float v) {
  reinterpret_cast<T*>(a.out)[static_cast<size_t>(o / 64) * a.N + cb * 64 + o % 64] = static_cast<T>(v);
}

// K split over the grid's blocks without a cluster (any GPU; any number of splits): the blocks add
// their sums into the fp32 workspace at L2, and the last to arrive at this column block writes the
// output and leaves the workspace and its counter at zero again (as the mma kernel's store_tile).
template <typename T, int WARPS, int ROWS>
__device__ __forceinline__ void store_split(const float* red, const Args& a, int cb) {
  __shared__ int last_arrival;
  constexpr int THREADS = WARPS * 32;
  const int outputs = a.M * 64, tid = threadIdx.x;
  for (int o = tid; o < outputs; o += THREADS)
    red_add(a.ws + static_cast<size_t>(o / 64) * a.N + cb * 64 + o % 64, warp_total<WARPS, ROWS>(red, o));
  __syncthreads();
  int* counter = a.counters + cb;
  if (tid == 0) last_arrival = arrive_acq_rel(counter) == a.splits - 1;  // after every thread's adds
  __syncthreads();
  if (!last_arrival) return;
  for (int o = tid; o < outputs; o += THREADS) {
    float* p = a.ws + static_cast<size_t>(o / 64) * a.N + cb * 64 + o % 64;
    store_out<T>(a, cb, o, __ldcg(p));
    __stcg(p, 0.f);
  }
  if (tid == 0) *counter = 0;
}

// The block's sums to the output without a cluster: one block along K writes them, several meet in the
// split-K workspace. `red` holds the block's warps' sums, one [ROWS][64] slot a warp, written and synchronised.
template <typename T, int WARPS, int ROWS>
__device__ __forceinline__ void store_sums(const float* red, const Args& a, int cb) {
  constexpr int THREADS = WARPS * 32;
  if (a.splits > 1) {
    store_split<T, WARPS, ROWS>(red, a, cb);
    return;
  }
  for (int o = threadIdx.x; o < a.M * 64; o += THREADS) store_out<T>(a, cb, o, warp_total<WARPS, ROWS>(red, o));
}

#if QMM_CLUSTERS && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// In a thread-block cluster (blocks along K of one column block) each block owns a share of the outputs.
// Every warp of the cluster has put its partial sums of block q's share straight into q's receive area,
// [cluster x WARPS][share] fp32 (cuda_gemv.cuh push_sums), and arrived at the cluster barrier; once all
// have, each block sums its area in (rank, warp) order (deterministic) and writes its share. No block
// reads another's memory, so none waits to leave.
template <typename T, int WARPS>
__device__ __forceinline__ void sum_received(const float* recv, const Args& a, int cb) {
  const int blocks = static_cast<int>(gridDim.x), share = gemv_share(a, blocks), outputs = a.M * 64;
  const int base = static_cast<int>(cooperative_groups::this_cluster().block_rank()) * share;
  cluster_wait();
  for (int i = threadIdx.x; i < share && base + i < outputs; i += WARPS * 32) {
    float v = 0.f;
    for (int q = 0; q < blocks * WARPS; ++q) v += recv[q * share + i];
    store_out<T>(a, cb, base + i, v);
  }
}
#endif

}  // namespace qmm

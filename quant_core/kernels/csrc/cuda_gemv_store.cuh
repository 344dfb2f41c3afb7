// The few-row kernel's partial sums to the output (cuda_gemv.cuh): one block along K writes them; K
// split over blocks without a cluster meet in the split-K workspace; in a thread-block cluster they
// meet in distributed shared memory with one cluster barrier.
#pragma once
#include "cuda_ptx.cuh"
#include "cuda_qmm.cuh"

#if QMM_CLUSTERS
#include <cooperative_groups.h>
#endif

namespace qmm {

// Outputs of a cluster's column block that each block sums and writes (its share); the receive area
// where the cluster's blocks put their partial sums of them is [cluster][share] fp32.
__host__ __device__ inline int gemv_share(const Args& a, int cluster) { return (a.M * 64 + cluster - 1) / cluster; }

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

// The block's sums to the output. In a cluster (blocks along K of one column block), each block owns
// a share of the outputs: every block writes its partial sums of block q's share into q's receive
// area (distributed shared memory), one cluster barrier, then each block sums its area in rank order
// and writes its share. No block reads another's memory after the barrier, so none waits to leave.
// `red` holds the block's warps' sums, one [ROWS][64] slot a warp, written and synchronised.
template <typename T, int WARPS, int ROWS>
__device__ __forceinline__ void store_sums(const float* red, float* recv, const Args& a, int cb) {
  constexpr int THREADS = WARPS * 32;
  const int outputs = a.M * 64, tid = threadIdx.x;
  if (gridDim.x == 1) {
    for (int o = tid; o < outputs; o += THREADS) store_out<T>(a, cb, o, warp_total<WARPS, ROWS>(red, o));
    return;
  }
  if (a.splits > 1) {
    store_split<T, WARPS, ROWS>(red, a, cb);
    return;
  }
#if QMM_CLUSTERS && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank()), blocks = static_cast<int>(gridDim.x);
  const int share = gemv_share(a, blocks);
  cluster_wait();  // (pairs with the arrival at entry) every block of the cluster has started
  for (int o = tid; o < outputs; o += THREADS)
    cluster.map_shared_rank(recv, o / share)[rank * share + o % share] = warp_total<WARPS, ROWS>(red, o);
  cluster_arrive();  // release: this block's partial sums are in their owners' memory
  cluster_wait();
  for (int i = tid; i < share && rank * share + i < outputs; i += THREADS) {
    float v = 0.f;
    for (int q = 0; q < blocks; ++q) v += recv[q * share + i];
    store_out<T>(a, cb, rank * share + i, v);
  }
#endif
}

}  // namespace qmm

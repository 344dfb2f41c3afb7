// Thin wrappers over the PTX instructions the quantized GEMM is built from (sm_80+; Hopper runs them).
// No torch headers: the kernel library compiles with nvcc alone (see cuda_build.py).
#pragma once
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace qmm {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared without passing through registers; .cg: cached in L2 only (weights
// are read once per launch, L1 would only evict the activations).
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices; lane i gives the row address of matrix i / 8, row i % 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c[16x8, fp32] += a[16x16] * b[16x8]. Fragment ownership (g = lane / 4, t = lane % 4):
// a: {row g, cols 2t..2t+1}, {row g+8, same}, {row g, cols 2t+8..}, {row g+8, cols 2t+8..};
// b: {k 2t..2t+1, col g}, {k 2t+8..2t+9, col g} (low half = lower k); c: {row g, cols 2t, 2t+1},
// {row g+8, cols 2t, 2t+1}.
template <typename T>
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]);

template <>
__device__ __forceinline__ void mma16816<half>(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// 16 bytes global -> registers, zero where !pred; .nc + L1::no_allocate: a weight is read once per
// launch, so it bypasses L1 (which keeps the activations that every warp re-reads).
__device__ __forceinline__ uint4 ld_stream16(const void* p, bool pred) {
  uint4 v;
  asm("{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n mov.b32 %0, 0;\n mov.b32 %1, 0;\n mov.b32 %2, 0;\n"
      " mov.b32 %3, 0;\n @p ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n}\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "r"(static_cast<int>(pred)));
  return v;
}

// The same 16 bytes through L2 only (.cg, not .nc): ptxas keeps a coherent load on its side of
// griddepcontrol.wait, while it moves read-only (.nc) loads across it freely, both ways (seen in the
// few-row kernel's SASS: the weight prefetch sank below the wait and an x load rose above it).
// For the loads that must be issued before pdl_wait() to overlap the previous kernel's tail.
__device__ __forceinline__ uint4 ld_early16(const void* p, bool pred) {
  uint4 v;
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n mov.b32 %0, 0;\n mov.b32 %1, 0;\n mov.b32 %2, 0;\n"
      " mov.b32 %3, 0;\n @p ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];\n}\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "r"(static_cast<int>(pred)));
  return v;
}

// 4 bytes that the previous kernel on the stream may have written (x under PDL): coherent, at L2
// (.cg), and volatile so neither the compiler nor ptxas hoists it above pdl_wait().
__device__ __forceinline__ uint32_t ld_after_wait32(const void* p) {
  uint32_t v;
  asm volatile("ld.global.cg.b32 %0, [%1];\n" : "=r"(v) : "l"(p));
  return v;
}

// fp32 add performed at L2, no return value (split-K partial sums).
__device__ __forceinline__ void red_add(float* p, float v) {
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(p), "f"(v) : "memory");
}

// One thread counts its block in at a split-K arrival counter, right after a __syncthreads that follows
// every thread's workspace adds: acq_rel at gpu scope is cumulative over what the barrier ordered before
// it (release), and makes the other blocks' sums visible to the last arrival (acquire), as CUTLASS's
// arrive_inc does. It replaces a __threadfence by every thread (gemv12's Nsight Compute: 0.3-0.4 membar
// stalls per issue in the split paths).
__device__ __forceinline__ int arrive_acq_rel(int* counter) {
  int old;
  asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;\n" : "=r"(old) : "l"(counter) : "memory");
  return old;
}

// Programmatic dependent launch (sm_90+; no-ops before). Launched with the PDL attribute (cuda_qmm.cu),
// a kernel may start while the previous one on the stream finishes: it reads only constant data (the
// weight, scales) until pdl_wait(), which returns once the previous grid has completed and its writes
// are visible; x, the output and the split-K workspace are touched only after it. pdl_launch() lets
// the next launch start early: called at entry, the next kernel's blocks take SM slots only as ours
// retire (they launch once every block of ours has started), and prefetch their weight meanwhile.
// ptxas moves read-only (.nc) loads across griddepcontrol.wait, both ways: a load that must stay on
// one side of it is coherent (ld_early16, ld_after_wait32, cp.async); tests/.../test_cuda_pdl_order.py
// reads the few-row kernel's SASS for it.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

}  // namespace qmm

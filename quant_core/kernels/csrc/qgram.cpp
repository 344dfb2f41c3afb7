// Gram matrix of bf16 rows into an fp32 accumulator, C += alpha * X^T X (issue 19 part 5: the
// Hessians GPTQ and QuantEase solve with, AWQ's input statistics). PyTorch has no CPU GEMM from bf16
// operands into an fp32 result, and a bf16 result would round each batch's sum.
//
// * Products of two bf16 values are exact in fp32, so against x.float().T @ x.float() only the order
//   of the sums differs: tokens are summed in chunks of kChunkPairs pairs, each chunk's fp32 partial
//   sum added to C (scaled by alpha) once.
// * C is symmetric: only 32-column strips' tiles on or above the diagonal are computed, then the
//   upper triangle is copied onto the lower one. C's lower triangle must equal its upper on entry.
// * X is packed once per call into token pairs, word(p, k) = x[2p, k] | x[2p + 1, k] << 16: one
//   32-bit word holds the two tokens vdpbf16ps multiplies and adds, for the broadcast row operand and
//   the column operand alike (blocked by chunk and strip, packed_index). Columns are zero-padded to kp (a multiple of kStrip), an odd last token
//   is paired with zeros.
// * AVX512-BF16 (vdpbf16ps, 2 products per lane) where the CPU has it; elsewhere (AVX2) each word is
//   widened to two fp32 lanes and FMAed.
#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kStrip = 32;        // columns per tile
constexpr int kChunkPairs = 128;  // token pairs per chunk: the chunk's columns stay in L2 for a strip's tiles

// Blocked: chunk c (kChunkPairs pairs), strip s (kStrip columns), pair p of the chunk, column j % kStrip:
// a tile's column operand is one contiguous 16 KB run, its row operand a 128-byte-stride run beside it.
inline int64_t packed_index(int p, int j, int strips) {
    const int64_t c = p / kChunkPairs;
    return ((c * strips + j / kStrip) * kChunkPairs + p % kChunkPairs) * kStrip + j % kStrip;
}

void pack_pairs(const uint16_t* x, int64_t ldx, int t, int k, int kp, uint32_t* xp, int nthreads) {
    const int np = (t + 1) / 2, strips = kp / kStrip;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int p = 0; p < np; ++p) {
        const uint16_t* a = x + (int64_t)(2 * p) * ldx;
        const uint16_t* b = 2 * p + 1 < t ? a + ldx : nullptr;
        for (int s = 0; s < strips; ++s) {
            uint32_t* o = xp + packed_index(p, s * kStrip, strips);
            const int j0 = s * kStrip, n = k - j0 < kStrip ? k - j0 : kStrip;
            if (b) {
                for (int j = 0; j < n; ++j) o[j] = (uint32_t)a[j0 + j] | ((uint32_t)b[j0 + j] << 16);
            } else {
                for (int j = 0; j < n; ++j) o[j] = a[j0 + j];
            }
            for (int j = n; j < kStrip; ++j) o[j] = 0;
        }
    }
}

// c[i, j] += alpha * acc for the rows i0 + m < rows and columns j0 + j < cols of a tile.
inline void add_tile(float* c, int64_t ldc, int i0, int mr, int j0, int rows, int cols, float alpha,
                     const float* acc) {
    for (int m = 0; m < mr && i0 + m < rows; ++m) {
        float* dst = c + (int64_t)(i0 + m) * ldc + j0;
        const float* src = acc + m * kStrip;
        const int n = cols - j0 < kStrip ? cols - j0 : kStrip;
        for (int j = 0; j < n; ++j) dst[j] += alpha * src[j];
    }
}

#if defined(__AVX512F__)
constexpr int kRowsBf16 = 8;  // 8 rows x 2 zmm: 16 accumulators

// cols: the tile's strip in this chunk, rows: its row block's strip, offset to the block's first row
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void tile_bf16(const uint32_t* cols, const uint32_t* rows, int np,
                                                                       float* acc_out) {
    __m512 acc[kRowsBf16][2];
    for (int m = 0; m < kRowsBf16; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
    for (int p = 0; p < np; ++p) {
        const uint32_t* col = cols + p * kStrip;
        const uint32_t* row = rows + p * kStrip;
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(col);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(col + 16);
#pragma GCC unroll 8
        for (int m = 0; m < kRowsBf16; ++m) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32((int)row[m]);
            acc[m][0] = _mm512_dpbf16_ps(acc[m][0], a, b0);
            acc[m][1] = _mm512_dpbf16_ps(acc[m][1], a, b1);
        }
    }
    for (int m = 0; m < kRowsBf16; ++m) {
        _mm512_storeu_ps(acc_out + m * kStrip, acc[m][0]);
        _mm512_storeu_ps(acc_out + m * kStrip + 16, acc[m][1]);
    }
}
#else
constexpr int kRowsBf16 = 8;
void tile_bf16(const uint32_t*, const uint32_t*, int, float*) {}  // never called: Python asks for it on AVX-512 only
#endif

constexpr int kRowsWide = 4;  // AVX2: 4 rows x 16 columns per pass (8 accumulators + 4 widened column vectors)

// One 16-column half of a tile: the low 16 bits of each word widen to token 2p, the high to 2p + 1.
inline void half_tile_fp32(const uint32_t* cols, const uint32_t* rows, int np, float* acc_out) {
    __m256 acc[kRowsWide][2];
    for (int m = 0; m < kRowsWide; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u);
    for (int p = 0; p < np; ++p) {
        const uint32_t* col = cols + p * kStrip;
        const uint32_t* row = rows + p * kStrip;
        __m256 blo[2], bhi[2];
        for (int v = 0; v < 2; ++v) {
            const __m256i w = _mm256_loadu_si256((const __m256i*)(col + 8 * v));
            blo[v] = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
            bhi[v] = _mm256_castsi256_ps(_mm256_and_si256(w, high));
        }
#pragma GCC unroll 4
        for (int m = 0; m < kRowsWide; ++m) {
            const __m256i w = _mm256_set1_epi32((int)row[m]);
            const __m256 alo = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
            const __m256 ahi = _mm256_castsi256_ps(_mm256_and_si256(w, high));
            for (int v = 0; v < 2; ++v) acc[m][v] = _mm256_fmadd_ps(ahi, bhi[v], _mm256_fmadd_ps(alo, blo[v], acc[m][v]));
        }
    }
    for (int m = 0; m < kRowsWide; ++m)
        for (int v = 0; v < 2; ++v) _mm256_storeu_ps(acc_out + m * kStrip + 8 * v, acc[m][v]);
}

// All tiles of strip s (columns [32 s, 32 s + 32)) on or above the diagonal, over one chunk of
// np pairs whose strips start at chunk (kChunkPairs * kStrip words apart).
void strip(const uint32_t* chunk, int np, int s, int k, float* c, int64_t ldc, float alpha, bool dpbf16) {
    alignas(64) float acc[kRowsBf16 * kStrip];
    const int j0 = s * kStrip;
    const int rows = j0 + kStrip < k ? j0 + kStrip : k;  // rows i < j0 + 32 reach the diagonal
    const int mr = dpbf16 ? kRowsBf16 : kRowsWide;
    const uint32_t* cols = chunk + (int64_t)s * kChunkPairs * kStrip;
    for (int i0 = 0; i0 < rows; i0 += mr) {
        const uint32_t* row = chunk + (int64_t)(i0 / kStrip) * kChunkPairs * kStrip + i0 % kStrip;
        if (dpbf16) {
            tile_bf16(cols, row, np, acc);
        } else {
            half_tile_fp32(cols, row, np, acc);
            half_tile_fp32(cols + 16, row, np, acc + 16);
        }
        add_tile(c, ldc, i0, mr, j0, k, k, alpha, acc);
    }
}

// Strip s's work grows with s (s + 1 row blocks): widest first, each to the least loaded thread.
std::vector<int> owned_strips(int strips, int team, int me) {
    std::vector<int64_t> load(team, 0);
    std::vector<int> mine;
    for (int s = strips - 1; s >= 0; --s) {
        int least = 0;
        for (int t = 1; t < team; ++t)
            if (load[t] < load[least]) least = t;
        load[least] += s + 1;
        if (least == me) mine.push_back(s);
    }
    return mine;
}

void mirror_upper(float* c, int64_t ldc, int k, int nthreads) {
    const int blocks = (k + kStrip - 1) / kStrip;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int bi = 0; bi < blocks; ++bi)  // 32 x 32 blocks, so reads and writes stay within few cache lines
        for (int bj = 0; bj <= bi; ++bj)
            for (int i = bi * kStrip; i < k && i < (bi + 1) * kStrip; ++i)
                for (int j = bj * kStrip; j < i && j < (bj + 1) * kStrip; ++j) c[(int64_t)i * ldc + j] = c[(int64_t)j * ldc + i];
}

}  // namespace

extern "C" {

// c [k, k] (row stride ldc, fp32, symmetric) += alpha * x^T x for x [t, k] bf16 (row stride ldx).
// dpbf16: use vdpbf16ps (the caller checked the CPU has AVX512-BF16); else the widening FMA path.
void qgram_bf16(float* c, int64_t ldc, const uint16_t* x, int64_t ldx, int t, int k, float alpha, int dpbf16,
                int nthreads) {
    if (t <= 0 || k <= 0) return;
    const int kp = (k + kStrip - 1) / kStrip * kStrip;
    const int np = (t + 1) / 2;
    const int chunks = (np + kChunkPairs - 1) / kChunkPairs;
    std::vector<uint32_t> xp((size_t)chunks * kChunkPairs * kp);
    pack_pairs(x, ldx, t, k, kp, xp.data(), nthreads);
    const int strips = kp / kStrip;
    // Each thread owns whole strips (disjoint columns of C) for every chunk: no barrier between chunks,
    // which on a shared, oversubscribed machine left the running thread waiting for a descheduled one.
#pragma omp parallel num_threads(nthreads)
    {
        const int team = omp_get_num_threads(), me = omp_get_thread_num();
        const std::vector<int> mine = owned_strips(strips, team, me);
        for (int p0 = 0; p0 < np; p0 += kChunkPairs) {
            const int n = np - p0 < kChunkPairs ? np - p0 : kChunkPairs;
            for (int s : mine) strip(xp.data() + (int64_t)p0 * kp, n, s, k, c, ldc, alpha, dpbf16 != 0);
        }
    }
    mirror_upper(c, ldc, k, nthreads);
}

}  // extern "C"

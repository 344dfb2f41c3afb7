// int4 and int8 GEMV for one activation row (decode, M = 1) on AVX2, the int formats' fp32-compute
// path: weight rows are read as they lie, 32 bytes (64 int4 / 32 int8 columns) per load, no transposing.
//
// The tile kernel (qgemv16.cpp) transposes every 8x8 block of words in registers and broadcasts
// each activation pair to all lanes; on AVX2 those shuffles, not the arithmetic, bounded it (one
// thread, 2048x5632 int4, weights in cache: leaving out the transpose alone made it 1.1-1.4x faster,
// leaving out the broadcasts 1.25x). Here nothing is shuffled: the 16-bit lane i of a row's 32 bytes
// holds columns 4i..4i+3 as its four nibbles, masked out in place (shift, AND) and multiplied in
// pmaddwd by int16 activations stored in that order (quantize_rows16: per 32-column block, the tile
// kernel's rounding and precision). int32 lane k then holds columns 8k..8k+7 (lanes 0-3 one block,
// 4-7 the next), so block scales apply lane-wise; each row ends in one horizontal sum.
// int4: 1.44x the tile kernel with the weights in cache (21.1 against 14.8 GB/s, one thread),
// 1.16-1.2x from memory with one thread (where one core's reads bound both). int8 (bytes masked
// and shifted out of 16-bit lanes the same way): 1.34-1.39x in cache (26.6-29.4 against 19.2-21.9).
#include <cmath>
#include <vector>

#include "block16.h"
#include "tiles.h"

using namespace qk;

namespace {

constexpr int CHUNK = 64;            // columns per 32-byte load of a row
constexpr int BLOCK = 32;            // columns per activation scale
constexpr float kActMax = 32767.0f;
// Weight rows read side by side, sharing each chunk's activation loads (one thread, 2048x5632,
// weights in cache: 1, 2, 4, 8 rows 18.0, 19.2, 21.1, 21.6 GB/s; from memory 4 rows read 16.2
// against 8 rows' 15.8 and the tile kernel's 14.0). The next tile's rows are prefetched as the
// tile kernel does: without it 4 rows side by side read 7.4 GB/s from memory.
constexpr int kRowsPerPass = 4;

inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// Per 64-column chunk c: 64 int16 activations (vector q holds column 4i + q of the chunk in lane i)
// and 8 lane scales (block 2c's four times, then block 2c + 1's); xsum: per weight group.
struct RowActs {
    const int16_t* acts;
    const float* lanes;
    const float* xsum;
};

// RP rows' sums over one chunk's columns of code * a (lane-wise, as described above) times the
// block scales, added into acc: the activations are loaded once for the RP rows. Byte codes (int8):
// a 16-bit lane holds columns 2i, 2i + 1, so a 32-byte chunk is 32 columns, one block.
template <int RP, bool BYTES>
inline void chunk_dots(const uint8_t* const* rp, int64_t off, const int16_t* a, const float* lanes, __m256* acc) {
    const __m256i* ap = (const __m256i*)a;
    const __m256i a0 = _mm256_loadu_si256(ap), a1 = _mm256_loadu_si256(ap + 1);
    const __m256 ls = _mm256_loadu_ps(lanes);
    if constexpr (BYTES) {
        const __m256i m = _mm256_set1_epi16(0x00FF);
        for (int i = 0; i < RP; ++i) {
            const __m256i v = _mm256_loadu_si256((const __m256i*)(rp[i] + off));
            const __m256i s = _mm256_add_epi32(_mm256_madd_epi16(_mm256_and_si256(v, m), a0),
                                               _mm256_madd_epi16(_mm256_srli_epi16(v, 8), a1));
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), ls, acc[i]);
        }
    } else {
        const __m256i m = _mm256_set1_epi16(0x000F);
        const __m256i a2 = _mm256_loadu_si256(ap + 2), a3 = _mm256_loadu_si256(ap + 3);
        for (int i = 0; i < RP; ++i) {
            const __m256i v = _mm256_loadu_si256((const __m256i*)(rp[i] + off));
            const __m256i s01 = _mm256_add_epi32(_mm256_madd_epi16(_mm256_and_si256(v, m), a0),
                                                 _mm256_madd_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), m), a1));
            const __m256i s23 = _mm256_add_epi32(_mm256_madd_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 8), m), a2),
                                                 _mm256_madd_epi16(_mm256_srli_epi16(v, 12), a3));
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s01, s23)), ls, acc[i]);
        }
    }
}

template <int RP, bool BYTES>
void tile_rows16(const Layer& L, int t, const RowActs& x, float* out, const Epilogue& epi) {
    constexpr int COLS = BYTES ? 32 : 64;  // columns per 32-byte chunk
    const uint8_t *rows[R], *ahead[R];
    L.tile_rows(t, rows);
    L.tile_rows(std::min(t + 1, L.tiles() - 1), ahead);
    const int nchunks = L.Kp / COLS, per_group = L.wpg * (BYTES ? 4 : 8) / COLS;
    TilePrefetch prefetch(ahead, L.row_bytes(), R / RP * nchunks);
    alignas(64) float res[R];
    for (int r = 0; r < R; r += RP) {
        __m256 tot[RP], acc[RP];
        for (int i = 0; i < RP; ++i) tot[i] = _mm256_setzero_ps();
        for (int g = 0, c = 0; c < nchunks; ++g) {
            const int cend = std::min(c + per_group, nchunks);
            for (int i = 0; i < RP; ++i) acc[i] = _mm256_setzero_ps();
            for (; c < cend; ++c) {
                prefetch.step();
                chunk_dots<RP, BYTES>(rows + r, 32 * (int64_t)c, x.acts + COLS * c, x.lanes + 8 * c, acc);
            }
            const float* sc = L.scales(t, g) + r;
            for (int i = 0; i < RP; ++i) tot[i] = _mm256_fmadd_ps(acc[i], _mm256_set1_ps(sc[i]), tot[i]);
        }
        for (int i = 0; i < RP; ++i) res[r + i] = hsum256(tot[i]);
    }
    vf y = vload(res);
    for (int g = 0; g < L.G; ++g) y = vfma(vload(L.offsets(t, g)), vset1(x.xsum[g]), y);
    epi.store(out, t, y);
}

// One row of activations as RowActs (as quantize16 rounds), in chunk_dots' order.
void quantize_rows16(const Layer& L, const float* x, int16_t* acts, float* lanes, float* xsum) {
    const bool bytes = L.kind == BYTES;
    const int gcols = L.wpg * (bytes ? 4 : 8);
    for (int g = 0; g < L.G; ++g) xsum[g] = 0.0f;
    for (int b = 0; b < L.Kp / BLOCK; ++b) {
        int32_t q[BLOCK], qsum = 0;
        const float s = quantize_block32(x + b * BLOCK, kActMax, q, &qsum) / kActMax;
        // lane scales: a byte chunk is one block (8 lanes); a nibble chunk two (4 lanes each)
        float* ls = lanes + (bytes ? 8 * b : 8 * (b / 2) + 4 * (b % 2));
        for (int l = 0; l < (bytes ? 8 : 4); ++l) ls[l] = s;
        for (int k = 0; k < BLOCK; ++k) {
            const int col = b * BLOCK + k;
            if (bytes) acts[col - k + 16 * (k % 2) + k / 2] = (int16_t)q[k];  // vector k % 2 (the byte), lane k / 2
            else acts[(col & ~63) + 16 * (col % 4) + (col % 64) / 4] = (int16_t)q[k];  // vector: the nibble, lane col/4
        }
        xsum[b * BLOCK / gcols] += (float)qsum * s;  // offsets meet the quantized activations, as the codes do
    }
}

}  // namespace

namespace qk {

// Whether gemv_rows16 takes this layer: int4 codes in whole 64-column chunks and groups (int8: any),
// on AVX2 (the AVX-512 tile kernel, 16 rows a tile, measured as fast with the weights in cache and
// 1.07-1.14x faster from memory: it keeps its own). Every row count M, not only decode's one row: a
// row's bits must not depend on M (a batch row as the same prompt alone: chain.batch = invoke loop),
// and the tile kernel sums in another order.
bool rows16_fits(const Layer& L, int M) {
#if defined(__AVX512F__)
    return false;
#else
    (void)M;
    if (L.kind == BYTES) return true;  // chunks of 32 columns: every Kp and group is whole ones
    return L.kind == NIB_INT && L.Kp % CHUNK == 0 && L.wpg % 8 == 0;
#endif
}

// x: [M, Kp]; each weight tile runs over the M rows in turn while its codes are in L1.
void gemv_rows16(const Layer& L, const float* x, int M, float* y, int64_t ldy, const Epilogue& epi, int nthreads) {
    static thread_local std::vector<int16_t> acts;
    static thread_local std::vector<float> lanes, xsum;
    const int64_t nlanes = (int64_t)L.Kp / BLOCK * 8;
    acts.resize((size_t)M * L.Kp);
    lanes.resize((size_t)M * nlanes);
    xsum.resize((size_t)M * L.G);
    int16_t* a = acts.data();
    float *ln = lanes.data(), *xs = xsum.data();
#pragma omp parallel for num_threads(nthreads) schedule(static) if (M > 1)
    for (int m = 0; m < M; ++m)
        quantize_rows16(L, x + (int64_t)m * L.Kp, a + (int64_t)m * L.Kp, ln + m * nlanes, xs + (int64_t)m * L.G);
    for_tiles<1>(L, M, y, ldy, epi.accumulate, nthreads, [&](int t, int, int m, float* out, int64_t) {
        const RowActs xa{a + (int64_t)m * L.Kp, ln + m * nlanes, xs + (int64_t)m * L.G};
        if (L.kind == BYTES) tile_rows16<kRowsPerPass, true>(L, t, xa, out, epi);
        else tile_rows16<kRowsPerPass, false>(L, t, xa, out, epi);
    });
}

}  // namespace qk

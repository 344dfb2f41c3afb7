// Small-batch matmul for codebook formats (nf4, fp4) with int16 activations: the codebook's
// fp32-compute path. The float path looked each code up with two permutes and a blend and paid an
// FMA per 8 codes: nf4 GEMV ran at a third of the memory bandwidth (AVX2, 2 threads). Here the 16
// levels become int16 (level * S, see make_tables: nf4 moves by at most 1.5e-5 of its largest
// level, fp4's levels stay exact), held as a low-byte and a high-byte table and looked up 32 codes
// at a time with pshufb; unpacking the two bytes gives int16 pairs that meet int16 activations in
// pmaddwd, as the int formats do (qgemv16.cpp). 1.7x the float path's throughput (one thread).
//
// Lane layout after the lookup (per 128-bit block of 4 rows r0..r3): unpacklo holds rows r0, r1,
// unpackhi rows r2, r3, each row over two 32-bit lanes (columns 0,2 | 4,6 of a word for the low
// nibbles; 1,3 | 5,7 for the high ones); a pairwise add at each block's end puts rows back in order.
// Precision over speed: activations are int16 per 32-column block as for the int formats (moved by
// at most 1.5e-5 of the block's largest). A pmaddwd lane is then up to 2 * 32767^2 < 2^31, so each
// one is converted to float before it is added: two int32 chains would overflow. Keeping int32
// sums per block needed 14-bit activations and levels instead: 10% faster (one thread, 2048x5632)
// but up to 9.7e-5 off the reference where the tests allow 1e-4; converting measured at most
// 2.8e-5 (fp4) and 5.6e-5 (nf4, its rounded levels) on the tests' shapes.
#include <cmath>
#include <vector>

#include "block16.h"
#include "tiles.h"

using namespace qk;

namespace {

constexpr int BLOCK = 32;           // columns per activation scale (a multiple of a word's 8)
constexpr float kInt16Max = 32767.0f;
// Activation rows per pass: 4 float chains per row, so AVX2's 16 registers hold 2 rows, AVX-512's 32 hold 4.
#if defined(__AVX512F__)
constexpr int kRowsLut = 4;
inline vi bcast128(const void* p) { return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)p)); }
inline vi bcast64(const void* p) { return _mm512_set1_epi64(*(const int64_t*)p); }
inline vi lookup(vi table, vi idx) { return _mm512_shuffle_epi8(table, idx); }
inline vi madd(vi a, vi b) { return _mm512_madd_epi16(a, b); }
inline vi unpacklo8(vi a, vi b) { return _mm512_unpacklo_epi8(a, b); }
inline vi unpackhi8(vi a, vi b) { return _mm512_unpackhi_epi8(a, b); }
// Lane sums of neighbours: out lane 4h + t = a[4h + 2t] + a[4h + 2t + 1] (t < 2), b's for t >= 2.
inline vf pair_sums(vf a, vf b) {
    const vi even = _mm512_setr_epi32(0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24, 26, 12, 14, 28, 30);
    const vi odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    return _mm512_add_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
}
#else
constexpr int kRowsLut = 2;
inline vi bcast128(const void* p) { return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)p)); }
inline vi bcast64(const void* p) { return _mm256_set1_epi64x(*(const int64_t*)p); }
inline vi lookup(vi table, vi idx) { return _mm256_shuffle_epi8(table, idx); }
inline vi madd(vi a, vi b) { return _mm256_madd_epi16(a, b); }
inline vi unpacklo8(vi a, vi b) { return _mm256_unpacklo_epi8(a, b); }
inline vi unpackhi8(vi a, vi b) { return _mm256_unpackhi_epi8(a, b); }
inline vf pair_sums(vf a, vf b) { return _mm256_hadd_ps(a, b); }
#endif

struct Tables {
    vi lo, hi;    // low and high bytes of the int16 levels, in every 128-bit block
    float unit;   // 1 / S: what one int16 level step is worth
};

// S: the largest power of two keeping every |level * S| <= 32767 when that makes the levels
// integers (fp4: exact), else 32767 / max |level| (nf4: each level within 0.5 / 32767 of its largest).
Tables make_tables(const float* lut) {
    float amax = 0.0f;
    for (int i = 0; i < 16; ++i) amax = std::max(amax, std::fabs(lut[i]));
    if (amax == 0.0f) amax = 1.0f;
    float S = std::ldexp(1.0f, (int)std::floor(std::log2(kInt16Max / amax)));
    for (int i = 0; i < 16; ++i)
        if (lut[i] * S != std::nearbyint(lut[i] * S)) S = kInt16Max / amax;
    alignas(16) uint8_t lo[16], hi[16];
    for (int i = 0; i < 16; ++i) {
        const int16_t v = (int16_t)std::nearbyint(lut[i] * S);
        lo[i] = (uint8_t)(v & 0xFF);
        hi[i] = (uint8_t)((uint16_t)v >> 8);
    }
    return Tables{bcast128(lo), bcast128(hi), 1.0f / S};
}

template <int MT>
void tile_lut16(const Layer& L, int t, const int16_t* a, int64_t lda, const float* ascale, int nblk,
                const Tables& tab, float* out, int64_t ldo, const Epilogue& epi) {
    constexpr int WPB = BLOCK / 8;  // words per block
    static_assert(R % WPB == 0, "tiles step R words: block ends fall on fixed words of each step");
    const uint8_t *rows[R], *ahead[R];
    L.tile_rows(t, rows);
    L.tile_rows(std::min(t + 1, L.tiles() - 1), ahead);
    const int nw = L.words();
    const vi low4 = vset1i(0x0F0F0F0F);
    vf acc[MT][4], blk[MT], tot[MT];
    for (int m = 0; m < MT; ++m) {
        blk[m] = tot[m] = vzero();
        for (int k = 0; k < 4; ++k) acc[m][k] = vzero();
    }
    TilePrefetch prefetch(ahead, L.row_bytes(), (nw + R - 1) / R);
    int g = 0, gend = std::min(L.wpg, nw);
    for (int c0 = 0; c0 < nw; c0 += R) {
        const int valid = std::min(R, nw - c0);  // whole blocks: Kp is
        vi cv[R];
        prefetch.step();
        load_tile(rows, 4 * (int64_t)c0, valid, cv);
        Unroll<0, R>::run([&](auto jc) QK_INLINE {
            constexpr int j = decltype(jc)::value;
            if (j >= valid) return;
            const vi even = vand(cv[j], low4), odd = vand(vsrli<4>(cv[j]), low4);  // columns 0,2,4,6 | 1,3,5,7
            const vi el = lookup(tab.lo, even), eh = lookup(tab.hi, even);
            const vi ol = lookup(tab.lo, odd), oh = lookup(tab.hi, odd);
            const vi p0 = unpacklo8(el, eh), p1 = unpackhi8(el, eh), p2 = unpacklo8(ol, oh), p3 = unpackhi8(ol, oh);
            for (int m = 0; m < MT; ++m) {
                const int16_t* ac = a + m * lda + (int64_t)(c0 + j) * 8;  // the word's activations: even, odd columns
                const vi xe = bcast64(ac), xo = bcast64(ac + 4);
                acc[m][0] = vadd(acc[m][0], vcvt(madd(p0, xe)));
                acc[m][1] = vadd(acc[m][1], vcvt(madd(p1, xe)));
                acc[m][2] = vadd(acc[m][2], vcvt(madd(p2, xo)));
                acc[m][3] = vadd(acc[m][3], vcvt(madd(p3, xo)));
            }
            if constexpr (j % WPB == WPB - 1) {  // end of an activation block: apply its scale
                const int b = (c0 + j) / WPB;
                for (int m = 0; m < MT; ++m) {
                    const vf rows01 = vadd(acc[m][0], acc[m][2]), rows23 = vadd(acc[m][1], acc[m][3]);
                    blk[m] = vfma(pair_sums(rows01, rows23), vset1(ascale[m * nblk + b]), blk[m]);
                    for (int k = 0; k < 4; ++k) acc[m][k] = vzero();
                }
                if (c0 + j + 1 == gend) {  // end of a weight group (groups are whole blocks); codebooks have no offsets
                    const vf sc = vload(L.scales(t, g));
                    for (int m = 0; m < MT; ++m) {
                        tot[m] = vfma(blk[m], sc, tot[m]);
                        blk[m] = vzero();
                    }
                    ++g;
                    gend = std::min(gend + L.wpg, nw);
                }
            }
        });
    }
    for (int m = 0; m < MT; ++m) epi.store(out + m * ldo, t, tot[m]);
}

// Activations as int16 per block (round half to even), each word's 8 columns as even then odd
// ones; block scales times `unit` (the levels' step), so one multiply undoes both.
void quantize_lut16(const Layer& L, const float* x, int M, int16_t* a, float* ascale, int nblk, float unit) {
    for (int m = 0; m < M; ++m) {
        for (int b = 0; b < nblk; ++b) {
            const float* xb = x + (int64_t)m * L.Kp + b * BLOCK;
            float amax = 0.0f;
            for (int k = 0; k < BLOCK; ++k) amax = std::max(amax, std::fabs(xb[k]));
            const float inv = amax > 0.0f ? kInt16Max / amax : 0.0f;
            ascale[m * nblk + b] = amax / kInt16Max * unit;
            for (int k = 0; k < BLOCK; ++k) {
                const int pos = (k & ~7) + 4 * (k & 1) + ((k & 7) >> 1);
                a[(int64_t)m * L.Kp + b * BLOCK + pos] = (int16_t)std::nearbyint(xb[k] * inv);
            }
        }
    }
}

#if !defined(__AVX512F__)
// One activation row (decode) on AVX2, weight rows read as they lie (as qgemv16_rows.cpp does for
// int4, whose notes say why; here 14.6-14.9 against the tile kernel's 12.9 GB/s, one thread, nf4
// 2048x5632 and 5632x2048 in cache; 13.3-13.9 against 11.8-12.4 from memory): 32 bytes = 64 columns
// per load, looked up as above; unpacking keeps
// each 128-bit half's columns together, so int32 lanes 0-3 hold one 32-column block and 4-7 the
// next, and the blocks' scales apply lane-wise. Activations per chunk c: four vectors, q = 0..3,
// lane (h, i) of vector q = column 64c + 32h + 16 * (q % 2) + 2i + q / 2.
constexpr int CHUNK = 64;
constexpr int kRowsPerPass = 4;  // rows side by side sharing the activation loads

template <int RP>
inline void chunk_dots(const uint8_t* const* rp, int64_t off, const int16_t* a, const float* lanes, const Tables& tab,
                       __m256* acc) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i* ap = (const __m256i*)a;
    const __m256i a0 = _mm256_loadu_si256(ap), a1 = _mm256_loadu_si256(ap + 1);
    const __m256i a2 = _mm256_loadu_si256(ap + 2), a3 = _mm256_loadu_si256(ap + 3);
    const __m256 ls = _mm256_loadu_ps(lanes);
    for (int i = 0; i < RP; ++i) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(rp[i] + off));
        const __m256i even = _mm256_and_si256(v, low4), odd = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
        const __m256i el = lookup(tab.lo, even), eh = lookup(tab.hi, even);
        const __m256i ol = lookup(tab.lo, odd), oh = lookup(tab.hi, odd);
        // each pmaddwd lane is up to 2 * 32767^2: to float before adding (see the top of this file)
        const __m256 s0 = _mm256_add_ps(_mm256_cvtepi32_ps(madd(unpacklo8(el, eh), a0)),
                                        _mm256_cvtepi32_ps(madd(unpackhi8(el, eh), a1)));
        const __m256 s1 = _mm256_add_ps(_mm256_cvtepi32_ps(madd(unpacklo8(ol, oh), a2)),
                                        _mm256_cvtepi32_ps(madd(unpackhi8(ol, oh), a3)));
        acc[i] = _mm256_fmadd_ps(_mm256_add_ps(s0, s1), ls, acc[i]);
    }
}

template <int RP>
void tile_lut_rows(const Layer& L, int t, const int16_t* a, const float* lanes, const Tables& tab, float* out,
                   const Epilogue& epi) {
    const uint8_t *rows[R], *ahead[R];
    L.tile_rows(t, rows);
    L.tile_rows(std::min(t + 1, L.tiles() - 1), ahead);
    const int nchunks = L.Kp / CHUNK, per_group = L.wpg / 8;  // a word is 8 columns
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
                chunk_dots<RP>(rows + r, 32 * (int64_t)c, a + 64 * c, lanes + 8 * c, tab, acc);
            }
            const float* sc = L.scales(t, g) + r;
            for (int i = 0; i < RP; ++i) tot[i] = _mm256_fmadd_ps(acc[i], _mm256_set1_ps(sc[i]), tot[i]);
        }
        for (int i = 0; i < RP; ++i) res[r + i] = vhsum(tot[i]);
    }
    epi.store(out, t, vload(res));  // codebooks have no offsets
}

// One row of activations in chunk_dots' order; lane scales times `unit` (the levels' step).
void quantize_lut_rows(const Layer& L, const float* x, int16_t* a, float* lanes, float unit) {
    for (int b = 0; b < L.Kp / BLOCK; ++b) {
        int32_t v[BLOCK], vsum = 0;
        const float amax = quantize_block32(x + b * BLOCK, kInt16Max, v, &vsum);
        const int c = b / 2, h = b % 2;
        for (int l = 0; l < 4; ++l) lanes[8 * c + 4 * h + l] = amax / kInt16Max * unit;
        for (int k = 0; k < BLOCK; ++k) {  // k = 16 * (q % 2) + 2i + q / 2
            const int q = 2 * (k % 2) + k / 16, i = (k % 16) / 2;
            a[64 * c + 16 * q + 8 * h + i] = (int16_t)v[k];
        }
    }
}

bool lut_rows_fit(const Layer& L, int M) { return M == 1 && L.Kp % CHUNK == 0 && L.wpg % 8 == 0; }

void gemv_lut_rows(const Layer& L, const float* x, float* y, const Epilogue& epi, int nthreads, const Tables& tab) {
    static thread_local std::vector<int16_t> a;
    static thread_local std::vector<float> lanes;
    a.resize(L.Kp);
    lanes.resize((size_t)L.Kp / CHUNK * 8);
    quantize_lut_rows(L, x, a.data(), lanes.data(), tab.unit);
    const int16_t* ap = a.data();  // thread_local: the pointers, not the vectors, go to the workers
    const float* lp = lanes.data();
    for_tiles<1>(L, 1, y, 0, epi.accumulate, nthreads, [&](int t, int, int, float* out, int64_t) {
        tile_lut_rows<kRowsPerPass>(L, t, ap, lp, tab, out, epi);
    });
}
#else
bool lut_rows_fit(const Layer&, int) { return false; }  // AVX-512: its tile kernel reads 16 rows a tile
void gemv_lut_rows(const Layer&, const float*, float*, const Epilogue&, int, const Tables&) {}
#endif

}  // namespace

namespace qk {

void gemv_lut16(const Layer& L, const float* x, int M, float* y, int64_t ldy, const Epilogue& epi, int nthreads) {
    static thread_local std::vector<int16_t> a;
    static thread_local std::vector<float> ascale;
    const int nblk = L.Kp / BLOCK;
    const Tables tab = make_tables(L.lut);
    if (lut_rows_fit(L, M)) return gemv_lut_rows(L, x, y, epi, nthreads, tab);
    a.resize((size_t)M * L.Kp);
    ascale.resize((size_t)M * nblk);
    quantize_lut16(L, x, M, a.data(), ascale.data(), nblk, tab.unit);
    const int16_t* ap = a.data();
    const float* dp = ascale.data();
    for_tiles<kRowsLut>(L, M, y, ldy, epi.accumulate, nthreads, [&](int t, int mt, int m0, float* out, int64_t ldo) {
        const int16_t* am = ap + (int64_t)m0 * L.Kp;
        const float* dm = dp + (int64_t)m0 * nblk;
        with_rows<kRowsLut>(mt, [&](auto rows) {
            tile_lut16<decltype(rows)::value>(L, t, am, L.Kp, dm, nblk, tab, out, ldo, epi);
        });
    });
}

}  // namespace qk

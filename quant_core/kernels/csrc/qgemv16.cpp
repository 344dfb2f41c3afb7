// Small-batch matmul for int formats with the activations as int16 per 32-column block: the
// kernels' fp32-compute path. Each block's scale is its largest |x| / 32767, so an activation
// moves by at most 1.5e-5 of its block's largest (outputs stay within the fp32 kernels' 1e-4
// test tolerance), and codes meet activations in pmaddwd (VNNI: vpdpwssd): two products and a
// sum per 32-bit lane in one instruction, where the float path spends an AND, a conversion and
// an FMA per code. Codes go in as int16 pairs straight from the word: (w >> 4i) & 0x000F000F
// holds columns i and i + 4 of a nibble word, (w >> 8i) & 0x00FF00FF columns i and i + 2 of a
// byte word; quantize16 puts the activations in the same pair order. One activation row (decode)
// on AVX2 takes qgemv16_rows.cpp instead (no transpose); codebook formats qgemv16_lut.cpp.
#include <cmath>
#include <vector>

#include "tiles.h"

using namespace qk;

namespace {

constexpr int BLOCK = 32;  // columns per activation scale
// Activation rows per pass over a tile: each pass transposes and decodes the tile's codes once. AVX-512
// (32 registers): 8, measured 1.64 ms against 1.91 for two passes of 4 (M = 8, 2048x5632 int4, one
// thread); AVX2 (16 registers): 4, where 8 spilled and measured the same as two passes of 4.
#if defined(__AVX512F__)
constexpr int kRowsI16 = 8;
#else
constexpr int kRowsI16 = 4;
#endif
constexpr float kInt16Max = 32767.0f;

template <int MT, bool BYTE_CODES>
void tile_i16(const Layer& L, int t, const int16_t* a, int64_t lda, const float* ascale, int nblk, const float* xsum,
              float* out, int64_t ldo, const Epilogue& epi) {
    constexpr int CPW = BYTE_CODES ? 4 : 8, WPB = BLOCK / CPW;  // columns per word, words per block
    static_assert(R % WPB == 0, "tiles step R words: block ends fall on fixed words of each step");
    constexpr int NA = MT == 1 ? 4 : MT == 2 ? 2 : 1;          // independent int32 chains per row
    // One row of nibbles (4 chains, one per pair): pairs 1 and 3 are taken as code * 16 (mask 0x00F000F0,
    // no shift of their own; pairs 2 and 3 share one shift by 8), summed in chains 1 and 3 and shifted
    // back by 4 at the block's end (exact: every product there is a multiple of 16; |sum| <= 2^27).
    // Two shifts fewer per word: M = 1 AVX2 0.505 -> 0.464 ms (2048x5632 int4 g128, one thread),
    // AVX-512 0.446 -> 0.438; with 2 rows (2 chains) it measured no gain.
    constexpr bool SCALED16 = !BYTE_CODES && NA == 4;
    const uint8_t *rows[R], *ahead[R];
    L.tile_rows(t, rows);
    L.tile_rows(std::min(t + 1, L.tiles() - 1), ahead);
    const int nw = L.words();
    const vi mask = vset1i(BYTE_CODES ? 0x00FF00FF : 0x000F000F), mask16 = vset1i(0x00F000F0);
    vi acc[MT][NA];
    vf blk[MT], tot[MT];
    for (int m = 0; m < MT; ++m) {
        blk[m] = tot[m] = vzero();
        for (int k = 0; k < NA; ++k) acc[m][k] = vzeroi();
    }
    TilePrefetch prefetch(ahead, L.row_bytes(), (nw + R - 1) / R);
    int g = 0, gend = std::min(L.wpg, nw);
    for (int c0 = 0; c0 < nw; c0 += R) {
        const int valid = std::min(R, nw - c0);
        vi cv[R];
        prefetch.step();
        load_tile(rows, 4 * (int64_t)c0, valid, cv);
        Unroll<0, R>::run([&](auto jc) QK_INLINE {
            constexpr int j = decltype(jc)::value;
            if (j >= valid) return;
            const int c = c0 + j;
            const int16_t* ac = a + (int64_t)c * CPW;
            const vi high = SCALED16 ? vsrli<8>(cv[j]) : cv[j];  // nibbles 2, 3, 6, 7 moved down
            Unroll<0, CPW / 2>::run([&](auto ic) QK_INLINE {
                constexpr int i = decltype(ic)::value;
                vi pair;
                if constexpr (SCALED16) pair = vand(i < 2 ? cv[j] : high, i % 2 ? mask16 : mask);
                else pair = vand(vsrli<(BYTE_CODES ? 8 : 4) * i>(cv[j]), mask);
                for (int m = 0; m < MT; ++m) acc[m][i % NA] = dot2(acc[m][i % NA], pair, vbcast32(ac + m * lda + 2 * i));
            });
            if constexpr (j % WPB == WPB - 1) {  // end of an activation block (Kp is whole blocks): apply its scale
                const int b = c / WPB;
                for (int m = 0; m < MT; ++m) {
                    vi s = acc[m][0];
                    if constexpr (SCALED16) {
                        vi s16 = acc[m][1];
                        for (int k = 2; k < NA; ++k) {
                            if (k % 2) s16 = vaddi(s16, acc[m][k]);
                            else s = vaddi(s, acc[m][k]);
                        }
                        s = vaddi(s, vsrai<4>(s16));
                    } else {
                        for (int k = 1; k < NA; ++k) s = vaddi(s, acc[m][k]);
                    }
                    blk[m] = vfma(vcvt(s), vset1(ascale[m * nblk + b]), blk[m]);
                    for (int k = 0; k < NA; ++k) acc[m][k] = vzeroi();
                }
                if (c + 1 == gend) {  // end of a weight group (groups are whole blocks)
                    const vf sc = vload(L.scales(t, g)), of = vload(L.offsets(t, g));
                    for (int m = 0; m < MT; ++m) {
                        tot[m] = vfma(of, vset1(xsum[m * L.G + g]), vfma(blk[m], sc, tot[m]));
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

// Activations as int16 per block (round half to even), in the kernels' pair order; scales per
// block and the sums of the quantized activations per weight group.
void quantize16(const Layer& L, const float* x, int M, int16_t* a, float* ascale, int nblk, float* xsum) {
    const bool bytes = L.kind == BYTES;
    const int gcols = L.wpg * (bytes ? 4 : 8);
    for (int m = 0; m < M; ++m) {
        const float* xm = x + (int64_t)m * L.Kp;
        for (int g = 0; g < L.G; ++g) xsum[m * L.G + g] = 0.0f;
        for (int b = 0; b < nblk; ++b) {
            const float* xb = xm + b * BLOCK;
            float amax = 0.0f;
            for (int k = 0; k < BLOCK; ++k) amax = std::max(amax, std::fabs(xb[k]));
            const float s = amax / kInt16Max, inv = amax > 0.0f ? kInt16Max / amax : 0.0f;
            ascale[m * nblk + b] = s;
            int32_t qsum = 0;
            for (int k = 0; k < BLOCK; ++k) {
                // nibble words pair columns (i, i + 4), byte words (i, i + 2)
                const int pos = bytes ? (k & ~3) + 2 * (k & 1) + ((k & 3) >> 1) : (k & ~7) + 2 * (k & 3) + ((k & 7) >> 2);
                const int16_t q = (int16_t)std::nearbyint(xb[k] * inv);
                a[(int64_t)m * L.Kp + b * BLOCK + pos] = q;
                qsum += q;
            }
            // the offsets meet the same (quantized) activations as the codes: sum(q) * s, not sum(x)
            xsum[m * L.G + b * BLOCK / gcols] += (float)qsum * s;
        }
    }
}

template <bool BYTE_CODES>
void gemv_i16(const Layer& L, const float* x, int M, float* y, int64_t ldy, const Epilogue& epi, int nthreads) {
    static thread_local std::vector<int16_t> a;
    static thread_local std::vector<float> ascale, xsum;
    const int nblk = L.Kp / BLOCK;
    a.resize((size_t)M * L.Kp);
    ascale.resize((size_t)M * nblk);
    xsum.resize((size_t)M * L.G);
    quantize16(L, x, M, a.data(), ascale.data(), nblk, xsum.data());
    const int16_t* ap = a.data();
    const float* dp = ascale.data();
    const float* sp = xsum.data();
    for_tiles<kRowsI16>(L, M, y, ldy, epi.accumulate, nthreads, [&](int t, int mt, int m0, float* out, int64_t ldo) {
        const int16_t* am = ap + (int64_t)m0 * L.Kp;
        const float *dm = dp + (int64_t)m0 * nblk, *sm = sp + (int64_t)m0 * L.G;
        with_rows<kRowsI16>(mt, [&](auto rows) {
            tile_i16<decltype(rows)::value, BYTE_CODES>(L, t, am, L.Kp, dm, nblk, sm, out, ldo, epi);
        });
    });
}

}  // namespace

namespace qk {
// Codebook formats (NIB_LUT): qgemv16_lut.cpp.
void gemv_lut16(const Layer& L, const float* x, int M, float* y, int64_t ldy, const Epilogue& epi, int nthreads);
// int4/int8 on AVX2, weight rows read as they lie: qgemv16_rows.cpp.
bool rows16_fits(const Layer& L, int M);
void gemv_rows16(const Layer& L, const float* x, int M, float* y, int64_t ldy, const Epilogue& epi, int nthreads);
}  // namespace qk

extern "C" {

// Arguments as qgemv_f32 (qgemv.cpp); lut: the 16 levels of a codebook format (NIB_LUT), else unused.
void qgemv_i16(const float* x, int M, const uint8_t* const* segs, const int* ends, int nseg, int kind, int N,
               int Kp, int G, int wpg, const float* sc, const float* of, const float* lut, const float* bias, float* y,
               int64_t ldy, int accumulate, int nthreads) {
    const Layer L{segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, lut};
    const Epilogue epi{bias, accumulate != 0};
    if (kind == NIB_LUT) gemv_lut16(L, x, M, y, ldy, epi, nthreads);
    else if (rows16_fits(L, M)) gemv_rows16(L, x, M, y, ldy, epi, nthreads);
    else if (kind == BYTES) gemv_i16<true>(L, x, M, y, ldy, epi, nthreads);
    else gemv_i16<false>(L, x, M, y, ldy, epi, nthreads);
}

}  // extern "C"

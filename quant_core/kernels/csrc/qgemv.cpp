// Fused small-batch quantized matmul y[M, N] = x[M, K] @ W^T, reading only the packed bytes.
//
// Per tile of R rows (layer.h / simd.h): the codes are transposed in registers so that lane r
// is row r, then either
//  * fp32: each column's codes become floats and are FMA'd with that column's activation
//    broadcast. For int formats the code of column i of a word is taken as code << (bits * i)
//    (one AND, no shift) and the activation was prescaled by 2^-(bits * i): the product is the
//    same float (power-of-two scaling is exact), one instruction cheaper per 8 codes.
//  * int8: activations quantized per row (symmetric, as reference.quantize_activations_int8),
//    codes multiplied as bytes (maddubs / VNNI dpbusd), int32 sums scaled once per group.
// Either way the result is sum_g scale[g] * sum(val * x) + off[g] * sum(x over g), per lane.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "tiles.h"

using namespace qk;

namespace {

const float kZeroLut[16] = {0};

// Multiplier of column i's activation for the prescaled int decode (1 where it shifts instead).
template <int KIND>
inline float prescale(int i) {
    if (KIND == NIB_INT) return i < 7 ? std::ldexp(1.0f, -4 * i) : 1.0f;
    if (KIND == BYTES) return i < 3 ? std::ldexp(1.0f, -8 * i) : 1.0f;
    return 1.0f;
}

template <int KIND, int I>
inline vf decode_prescaled(vi v, const Lut& lut) {
    if constexpr (KIND == NIB_INT) return I < 7 ? vcvt(vand(v, vset1i(0xF << (4 * I)))) : vcvt(vsrli<28>(v));
    else if constexpr (KIND == BYTES) return I < 3 ? vcvt(vand(v, vset1i(0xFF << (8 * I)))) : vcvt(vsrli<24>(v));
    else return lut_nibble<I>(v, lut);
}

// MT activation rows against tile t; writes out[m * ldo + r] for the tile's R rows.
template <int MT, int KIND>
void tile_f32(const Layer& L, int t, const float* x, int64_t ldx, const float* xsum, float* out, int64_t ldo,
              const Epilogue& epi) {
    constexpr int CPW = cols_per_word<KIND>();
    constexpr int NA = MT == 1 ? 4 : MT == 2 ? 2 : 1;  // independent FMA chains per row
    const uint8_t *rows[R], *ahead[R];
    L.tile_rows(t, rows);
    L.tile_rows(std::min(t + 1, L.tiles() - 1), ahead);
    const Lut lut = make_lut(L.lut ? L.lut : kZeroLut);
    const int nw = L.words();
    vf tot[MT], acc[MT][NA];
    for (int m = 0; m < MT; ++m) {
        tot[m] = vzero();
        for (int a = 0; a < NA; ++a) acc[m][a] = vzero();
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
            const float* xc = x + (int64_t)c * CPW;
            Unroll<0, CPW>::run([&](auto ic) QK_INLINE {
                constexpr int i = decltype(ic)::value;
                const vf wv = decode_prescaled<KIND, i>(cv[j], lut);
                for (int m = 0; m < MT; ++m) acc[m][i % NA] = vfma(wv, vset1(xc[m * ldx + i]), acc[m][i % NA]);
            });
            if (c + 1 == gend) {  // end of group g: scale the partial sums into the totals
                const vf s = vload(L.scales(t, g));
                for (int m = 0; m < MT; ++m) {
                    vf a = acc[m][0];
                    for (int k = 1; k < NA; ++k) a = vadd(a, acc[m][k]);
                    tot[m] = vfma(a, s, tot[m]);
                    for (int k = 0; k < NA; ++k) acc[m][k] = vzero();
                }
                if (KIND != NIB_LUT) {
                    const vf o = vload(L.offsets(t, g));
                    for (int m = 0; m < MT; ++m) tot[m] = vfma(o, vset1(xsum[m * L.G + g]), tot[m]);
                }
                ++g;
                gend = std::min(gend + L.wpg, nw);
            }
        });
    }
    for (int m = 0; m < MT; ++m) epi.store(out + m * ldo, t, tot[m]);
}

template <int MT, bool BYTE_CODES>
void tile_i8(const Layer& L, int t, const int8_t* q, int64_t ldq, const float* qsum, const float* qscale,
             float* out, int64_t ldo, const Epilogue& epi) {
    constexpr int CPW = BYTE_CODES ? 4 : 8;
    constexpr int NA = MT == 1 ? 4 : MT == 2 ? 2 : 1;  // dpbusd chains are long: several per row
    const uint8_t *rows[R], *ahead[R];
    L.tile_rows(t, rows);
    L.tile_rows(std::min(t + 1, L.tiles() - 1), ahead);
    const int nw = L.words();
    const vi low4 = vset1i(0x0F0F0F0F);
    vi acc[MT][NA];
    vf tot[MT];
    for (int m = 0; m < MT; ++m) {
        tot[m] = vzero();
        for (int a = 0; a < NA; ++a) acc[m][a] = vzeroi();
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
            const int8_t* qc = q + (int64_t)c * CPW;
            if constexpr (BYTE_CODES) {
                for (int m = 0; m < MT; ++m)
                    acc[m][j % NA] = dot_bytes(acc[m][j % NA], cv[j], vbcast32(qc + m * ldq));
            } else {  // low nibbles are the even columns, high nibbles the odd ones (see quantize_rows)
                const vi lo = vand(cv[j], low4), hi = vand(vsrli<4>(cv[j]), low4);
                for (int m = 0; m < MT; ++m)
                    acc[m][j % NA] = dot_nibbles(acc[m][j % NA], lo, hi, vbcast32(qc + m * ldq),
                                                 vbcast32(qc + m * ldq + 4));
            }
            if (c + 1 == gend) {
                const vf s = vload(L.scales(t, g));
                vf o = vload(L.offsets(t, g));
                if (BYTE_CODES && kBytesBias != 0.0f) o = vfma(s, vset1(kBytesBias), o);
                for (int m = 0; m < MT; ++m) {
                    vi a = acc[m][0];
                    for (int k = 1; k < NA; ++k) a = vaddi(a, acc[m][k]);
                    tot[m] = vfma(o, vset1(qsum[m * L.G + g]), vfma(vcvt(a), s, tot[m]));
                    for (int k = 0; k < NA; ++k) acc[m][k] = vzeroi();
                }
                ++g;
                gend = std::min(gend + L.wpg, nw);
            }
        });
    }
    for (int m = 0; m < MT; ++m) epi.store(out + m * ldo, t, vmul(tot[m], vset1(qscale[m])));
}

template <int KIND>
void gemv_f32(const Layer& L, const float* x, int M, float* y, int64_t ldy, const Epilogue& epi, int nthreads) {
    constexpr int CPW = cols_per_word<KIND>();
    static thread_local std::vector<float> xs, xsum;
    xs.resize((size_t)M * L.Kp);
    xsum.assign((size_t)M * L.G, 0.0f);
    float mult[CPW];
    for (int i = 0; i < CPW; ++i) mult[i] = prescale<KIND>(i);
    const int gcols = L.wpg * CPW;
    for (int m = 0; m < M; ++m)
        for (int k = 0; k < L.Kp; ++k) {
            const float v = x[(int64_t)m * L.Kp + k];
            xs[(size_t)m * L.Kp + k] = v * mult[k % CPW];
            xsum[(size_t)m * L.G + k / gcols] += v;
        }
    const float* xp = xs.data();
    const float* sp = xsum.data();
    for_tiles(L, M, y, ldy, epi.accumulate, nthreads, [&](int t, int mt, int m0, float* out, int64_t ldo) {
        const float* xm = xp + (int64_t)m0 * L.Kp;
        const float* sm = sp + (int64_t)m0 * L.G;
        with_rows<4>(mt, [&](auto rows) {
            tile_f32<decltype(rows)::value, KIND>(L, t, xm, L.Kp, sm, out, ldo, epi);
        });
    });
}

// Per-row symmetric int8 of x (as reference.quantize_activations_int8: amax / 127, round half
// to even, clamp to +-127), with the columns of each 8-column chunk reordered even-then-odd for
// the nibble layout; qsum[m, g] = sum of the int8 values of group g.
void quantize_rows(const Layer& L, const float* x, int M, int8_t* q, float* qscale, float* qsum) {
    const bool nib = L.kind != BYTES;
    const int gcols = L.wpg * (nib ? 8 : 4);
    for (int m = 0; m < M; ++m) {
        const float* xm = x + (int64_t)m * L.Kp;
        float amax = 0.0f;
        for (int k = 0; k < L.Kp; ++k) amax = std::max(amax, std::fabs(xm[k]));
        const float s = std::max(amax, 1e-8f) / 127.0f;
        qscale[m] = s;
        for (int g = 0; g < L.G; ++g) qsum[m * L.G + g] = 0.0f;
        for (int k = 0; k < L.Kp; ++k) {
            const float v = std::min(127.0f, std::max(-127.0f, std::nearbyint(xm[k] / s)));
            const int pos = nib ? (k & ~7) + ((k & 1) ? 4 : 0) + ((k & 7) >> 1) : k;
            q[(int64_t)m * L.Kp + pos] = (int8_t)v;
            qsum[m * L.G + k / gcols] += v;
        }
    }
}

template <bool BYTE_CODES>
void gemv_i8(const Layer& L, const float* x, int M, float* y, int64_t ldy, const Epilogue& epi, int nthreads) {
    static thread_local std::vector<int8_t> q;
    static thread_local std::vector<float> qscale, qsum;
    q.resize((size_t)M * L.Kp);
    qscale.resize(M);
    qsum.resize((size_t)M * L.G);
    quantize_rows(L, x, M, q.data(), qscale.data(), qsum.data());
    const int8_t* qp = q.data();
    const float* sp = qsum.data();
    const float* dp = qscale.data();
    for_tiles(L, M, y, ldy, epi.accumulate, nthreads, [&](int t, int mt, int m0, float* out, int64_t ldo) {
        const int8_t* qm = qp + (int64_t)m0 * L.Kp;
        const float* sm = sp + (int64_t)m0 * L.G;
        with_rows<4>(mt, [&](auto rows) {
            tile_i8<decltype(rows)::value, BYTE_CODES>(L, t, qm, L.Kp, sm, dp + m0, out, ldo, epi);
        });
    });
}

}  // namespace

extern "C" {

// x: float32 [M, Kp] (columns in weight order, zero-padded to Kp); y[m * ldy + n] = (x @ W^T)[m, n]
// (+ bias[n], bias padded to whole tiles, or null; + y[m * ldy + n] itself when accumulate).
void qgemv_f32(const float* x, int M, const uint8_t* const* segs, const int* ends, int nseg, int kind, int N,
               int Kp, int G, int wpg, const float* sc, const float* of, const float* lut, const float* bias,
               float* y, int64_t ldy, int accumulate, int nthreads) {
    const Layer L{segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, lut};
    const Epilogue epi{bias, accumulate != 0};
    if (kind == NIB_INT) gemv_f32<NIB_INT>(L, x, M, y, ldy, epi, nthreads);
    else if (kind == NIB_LUT) gemv_f32<NIB_LUT>(L, x, M, y, ldy, epi, nthreads);
    else gemv_f32<BYTES>(L, x, M, y, ldy, epi, nthreads);
}

// Same, with the activations quantized to int8 per row first (int formats only).
void qgemv_i8(const float* x, int M, const uint8_t* const* segs, const int* ends, int nseg, int kind, int N,
              int Kp, int G, int wpg, const float* sc, const float* of, const float* bias, float* y, int64_t ldy,
              int accumulate, int nthreads) {
    const Layer L{segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, nullptr};
    const Epilogue epi{bias, accumulate != 0};
    if (kind == BYTES) gemv_i8<true>(L, x, M, y, ldy, epi, nthreads);
    else gemv_i8<false>(L, x, M, y, ldy, epi, nthreads);
}

}  // extern "C"

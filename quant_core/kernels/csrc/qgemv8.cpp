// Prompt-sized matmul for int formats with the activations as int8 per 32-column block (as
// llama.cpp's q8 blocks): the kernels' "q8" prefill path (cpu_simd.py: PREFILL_PATH).
//
// A 15-token prompt through SmolLM2's int4 layers spent ~80 % of its time in the int16 path
// (qgemv16.cpp): two products per 32-bit lane per instruction. Here codes meet activations in
// vpdpbusd (VNNI) or maddubs (AVX2): four products per lane per instruction, and a nibble word
// needs one AND and one shift+AND for all its rows of activations. Each block's scale is its
// largest |x| / 127, so an activation moves by at most 1/254 of its block's largest: outputs are
// no longer within the fp32 kernels' 1e-4, and the perplexity cost is measured (cpu_speed.md).
#include <cmath>
#include <vector>

#include "tiles.h"

using namespace qk;

namespace {

constexpr int BLOCK = 32;  // columns per activation scale
// Activation rows per pass over a tile (each pass transposes the tile's codes once).
#if defined(__AVX512F__)
constexpr int kRowsQ8 = 8;
#else
constexpr int kRowsQ8 = 4;
#endif

template <int MT, bool BYTE_CODES>
void tile_q8(const Layer& L, int t, const int8_t* q, int64_t ldq, const float* qscale, int nblk, const float* qsum,
             float* out, int64_t ldo, const Epilogue& epi) {
    constexpr int CPW = BYTE_CODES ? 4 : 8, WPB = BLOCK / CPW;  // columns per word, words per block
    constexpr int NA = MT == 1 ? 2 : 1;                           // dpbusd chains per row
    const uint8_t *rows[R], *ahead[R];
    L.tile_rows(t, rows);
    L.tile_rows(std::min(t + 1, L.tiles() - 1), ahead);
    const int nw = L.words();
    const vi low4 = vset1i(0x0F0F0F0F);
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
            const int8_t* qc = q + (int64_t)c * CPW;
            if constexpr (BYTE_CODES) {
                for (int m = 0; m < MT; ++m)
                    acc[m][j % NA] = dot_bytes(acc[m][j % NA], cv[j], vbcast32(qc + m * ldq));
            } else {  // low nibbles are the even columns, high nibbles the odd ones (see quantize8)
                const vi lo = vand(cv[j], low4), hi = vand(vsrli<4>(cv[j]), low4);
                for (int m = 0; m < MT; ++m)
                    acc[m][j % NA] = dot_nibbles(acc[m][j % NA], lo, hi, vbcast32(qc + m * ldq),
                                                 vbcast32(qc + m * ldq + 4));
            }
            if ((c + 1) % WPB == 0 || c + 1 == nw) {  // end of an activation block: apply its scale
                const int b = c / WPB;
                for (int m = 0; m < MT; ++m) {
                    vi s = acc[m][0];
                    for (int k = 1; k < NA; ++k) s = vaddi(s, acc[m][k]);
                    blk[m] = vfma(vcvt(s), vset1(qscale[m * nblk + b]), blk[m]);
                    for (int k = 0; k < NA; ++k) acc[m][k] = vzeroi();
                }
            }
            if (c + 1 == gend) {  // end of a weight group (always a block end: groups are whole blocks)
                const vf s = vload(L.scales(t, g));
                vf o = vload(L.offsets(t, g));
                if (BYTE_CODES && kBytesBias != 0.0f) o = vfma(s, vset1(kBytesBias), o);  // dot_bytes' u - 128
                for (int m = 0; m < MT; ++m) {
                    tot[m] = vfma(o, vset1(qsum[m * L.G + g]), vfma(blk[m], s, tot[m]));
                    blk[m] = vzero();
                }
                ++g;
                gend = std::min(gend + L.wpg, nw);
            }
        });
    }
    for (int m = 0; m < MT; ++m) epi.store(out + m * ldo, t, tot[m]);
}

// Activations as int8 per block (round half to even, +-127), nibble layouts with each 8-column
// chunk reordered even-then-odd; per-block scales, and per weight group the sum of the quantized
// activations times their scales (the offsets meet the same quantized values as the codes).
void quantize8(const Layer& L, const float* x, int M, int8_t* q, float* qscale, int nblk, float* qsum) {
    const bool nib = L.kind != BYTES;
    const int gcols = L.wpg * (nib ? 8 : 4);
    for (int m = 0; m < M; ++m) {
        const float* xm = x + (int64_t)m * L.Kp;
        for (int g = 0; g < L.G; ++g) qsum[m * L.G + g] = 0.0f;
        for (int b = 0; b < nblk; ++b) {
            const float* xb = xm + b * BLOCK;
            float amax = 0.0f;
            for (int k = 0; k < BLOCK; ++k) amax = std::max(amax, std::fabs(xb[k]));
            const float s = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            qscale[m * nblk + b] = s;
            int32_t sum = 0;
            for (int k = 0; k < BLOCK; ++k) {
                const int pos = nib ? (k & ~7) + ((k & 1) ? 4 : 0) + ((k & 7) >> 1) : k;
                const int v = (int)std::nearbyint(xb[k] * inv);
                q[(int64_t)m * L.Kp + b * BLOCK + pos] = (int8_t)v;
                sum += v;
            }
            qsum[m * L.G + b * BLOCK / gcols] += (float)sum * s;
        }
    }
}

template <bool BYTE_CODES>
void gemv_q8(const Layer& L, const float* x, int M, float* y, int64_t ldy, const Epilogue& epi, int nthreads) {
    static thread_local std::vector<int8_t> q;
    static thread_local std::vector<float> qscale, qsum;
    const int nblk = L.Kp / BLOCK;
    q.resize((size_t)M * L.Kp);
    qscale.resize((size_t)M * nblk);
    qsum.resize((size_t)M * L.G);
    quantize8(L, x, M, q.data(), qscale.data(), nblk, qsum.data());
    const int8_t* qp = q.data();
    const float* dp = qscale.data();
    const float* sp = qsum.data();
    for_tiles<kRowsQ8>(L, M, y, ldy, epi.accumulate, nthreads, [&](int t, int mt, int m0, float* out, int64_t ldo) {
        const int8_t* qm = qp + (int64_t)m0 * L.Kp;
        const float *dm = dp + (int64_t)m0 * nblk, *sm = sp + (int64_t)m0 * L.G;
        switch (mt) {
            case 8: tile_q8<8, BYTE_CODES>(L, t, qm, L.Kp, dm, nblk, sm, out, ldo, epi); break;
            case 7: tile_q8<7, BYTE_CODES>(L, t, qm, L.Kp, dm, nblk, sm, out, ldo, epi); break;
            case 6: tile_q8<6, BYTE_CODES>(L, t, qm, L.Kp, dm, nblk, sm, out, ldo, epi); break;
            case 5: tile_q8<5, BYTE_CODES>(L, t, qm, L.Kp, dm, nblk, sm, out, ldo, epi); break;
            case 4: tile_q8<4, BYTE_CODES>(L, t, qm, L.Kp, dm, nblk, sm, out, ldo, epi); break;
            case 3: tile_q8<3, BYTE_CODES>(L, t, qm, L.Kp, dm, nblk, sm, out, ldo, epi); break;
            case 2: tile_q8<2, BYTE_CODES>(L, t, qm, L.Kp, dm, nblk, sm, out, ldo, epi); break;
            default: tile_q8<1, BYTE_CODES>(L, t, qm, L.Kp, dm, nblk, sm, out, ldo, epi); break;
        }
    });
}

}  // namespace

extern "C" {

// Int formats only (kind NIB_INT or BYTES); arguments as qgemv_f32 (qgemv.cpp) without the lut.
void qgemv_q8(const float* x, int M, const uint8_t* const* segs, const int* ends, int nseg, int kind, int N, int Kp,
              int G, int wpg, const float* sc, const float* of, const float* bias, float* y, int64_t ldy,
              int accumulate, int nthreads) {
    const Layer L{segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, nullptr};
    const Epilogue epi{bias, accumulate != 0};
    if (kind == BYTES) gemv_q8<true>(L, x, M, y, ldy, epi, nthreads);
    else gemv_q8<false>(L, x, M, y, ldy, epi, nthreads);
}

}  // extern "C"

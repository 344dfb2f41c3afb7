// Batched int-format matmul on int8 units (AVX-512 VNNI builds): y[M, N] (+)= x[M, Kp] @ W^T (+ bias),
// the activations quantized to int8 per block of AB columns (llama.cpp's q8 blocks, wider).
//
// qgemm.cpp's bf16 GEMM runs at the bf16 units' peak (as oneDNN's bf16 GEMM: 1.1B shapes at M = 512
// measured 0.95-0.99x its time, the panel's dequantization 1-2 % of it), so a bf16 model's prompt
// cannot get faster on bf16 products. vpdpbusd does four u8 x s8 products per lane per instruction
// where vdpbf16ps does two: each thread unpacks a panel of NB weight rows into u8 codes once
// (panel[(quad * NV + v) * R + lane]: four columns of a row per 32-bit lane, the layout dpbusd reads)
// and runs every block of MR activation rows over it with MR x NV int32 accumulators, scaled into
// float totals at each block's end: tot += acc * (d[m, b] * scale[g]) + offset[g] * d[m, b] * sum(q).
// Nibble codes are stored as they unpack (even columns of a word, then odd ones), the activations in
// the same order (quantize_rows8).
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "layer.h"

using namespace qk;

#if defined(__AVX512VNNI__)
namespace {

constexpr int NV = 2, MR = 6;  // 12 int32 and 12 float accumulators of the 32 registers
constexpr int NB = NV * R;      // weight rows per panel

// Columns per activation scale: the largest multiple of 32 up to max_block that divides the weight
// group (no block spans two groups). Each block's end costs MR x NV conversions, multiplies and FMAs
// against its AB / 4 x MR x NV products: 128-column blocks measured 1.15-1.4x 32-column ones.
inline int block_cols(const Layer& L, int max_block) {
    const int gcols = L.wpg * (L.kind == BYTES ? 4 : 8);
    for (int ab = max_block / 32 * 32; ab > 32; ab -= 32)
        if (gcols % ab == 0) return ab;
    return 32;
}

// Codes of tile t into lanes [v * R, v * R + R) of the panel, every column.
void unpack_tile(const Layer& L, int t, int v, uint8_t* panel) {
    const bool bytes = L.kind == BYTES;
    if (t >= L.tiles()) {  // rows past the weight: zero codes, never stored
        for (int q = 0; q < L.Kp / 4; ++q) vstorei(panel + ((int64_t)q * NV + v) * 64, vzeroi());
        return;
    }
    const uint8_t* rows[R];
    L.tile_rows(t, rows);
    const int nw = L.words();
    const vi low4 = vset1i(0x0F0F0F0F);
    for (int c0 = 0; c0 < nw; c0 += R) {
        const int valid = std::min(R, nw - c0);
        vi cv[R];
        load_tile(rows, 4 * (int64_t)c0, valid, cv);
        for (int j = 0; j < valid; ++j) {
            const int c = c0 + j;
            if (bytes) {
                vstorei(panel + ((int64_t)c * NV + v) * 64, cv[j]);
            } else {
                vstorei(panel + ((int64_t)(2 * c) * NV + v) * 64, vand(cv[j], low4));
                vstorei(panel + ((int64_t)(2 * c + 1) * NV + v) * 64, vand(vsrli<4>(cv[j]), low4));
            }
        }
    }
}

template <typename X>
inline float load_x(const X* p) {
    if constexpr (sizeof(X) == 2) {  // bf16 bit pattern
        const uint32_t bits = (uint32_t)*p << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
    } else {
        return *p;
    }
}

// Rows of x as int8 per block (round half to even, +-127) in the panel's column order; d[m, b] the
// block's scale, s[m, b] = d * (sum of the block's int8 values): what the offsets multiply.
template <typename X>
void quantize_rows8(const Layer& L, const X* x, int M, int64_t ldx, int ab, int8_t* q, float* d, float* s,
                    int nthreads) {
    const bool nib = L.kind != BYTES;
    const int nblk = (L.Kp + ab - 1) / ab;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int m = 0; m < M; ++m) {
        const X* xm = x + (int64_t)m * ldx;
        for (int b = 0; b < nblk; ++b) {
            const int k0 = b * ab, k1 = std::min(L.Kp, k0 + ab);
            float amax = 0.0f;
            for (int k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(load_x(xm + k)));
            const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            int32_t sum = 0;
            for (int k = k0; k < k1; ++k) {
                const int pos = nib ? (k & ~7) + ((k & 1) ? 4 : 0) + ((k & 7) >> 1) : k;
                const int v = (int)std::nearbyint(load_x(xm + k) * inv);
                q[(int64_t)m * L.Kp + pos] = (int8_t)v;
                sum += v;
            }
            d[(int64_t)m * nblk + b] = amax / 127.0f;
            s[(int64_t)m * nblk + b] = (float)sum * (amax / 127.0f);
        }
    }
}

// MR rows (q rows qr, scales d/s rows) over the panel of tile pair p: c[m * NB + lane].
void micro_q8(const Layer& L, int p, int ab, const int8_t* const* qr, const float* const* dr,
              const float* const* sr, const uint8_t* panel, float* c) {
    vf tot[MR][NV];
    for (int m = 0; m < MR; ++m)
        for (int v = 0; v < NV; ++v) tot[m][v] = vzero();
    const int gcols = L.wpg * (L.kind == BYTES ? 4 : 8), nblk = (L.Kp + ab - 1) / ab;
    const int t0 = p * NV;
    for (int b = 0; b < nblk; ++b) {
        const int k0 = b * ab, k1 = std::min(L.Kp, k0 + ab);
        vi acc[MR][NV];
        for (int m = 0; m < MR; ++m)
            for (int v = 0; v < NV; ++v) acc[m][v] = vzeroi();
        for (int k = k0; k < k1; k += 4) {
            const uint8_t* pk = panel + (int64_t)(k / 4) * NV * 64;
            const vi b0 = vloadi(pk), b1 = vloadi(pk + 64);
#pragma GCC unroll 6
            for (int m = 0; m < MR; ++m) {
                const vi a = vbcast32(qr[m] + k);
                acc[m][0] = _mm512_dpbusd_epi32(acc[m][0], b0, a);
                acc[m][1] = _mm512_dpbusd_epi32(acc[m][1], b1, a);
            }
        }
        const int g = k0 / gcols;
        vf sw[NV], ow[NV];
        for (int v = 0; v < NV; ++v) {
            const int t = std::min(t0 + v, L.tiles() - 1);  // rows past the weight: never stored
            sw[v] = vload(L.scales(t, g));
            ow[v] = vload(L.offsets(t, g));
        }
        for (int m = 0; m < MR; ++m) {
            const vf dm = vset1(dr[m][b]), sm = vset1(sr[m][b]);
            for (int v = 0; v < NV; ++v)
                tot[m][v] = vfma(ow[v], sm, vfma(vcvt(acc[m][v]), vmul(dm, sw[v]), tot[m][v]));
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int v = 0; v < NV; ++v) vstore(c + m * NB + v * R, tot[m][v]);
}

inline void put(float* y, float v) { *y = v; }
inline void put(uint16_t* y, float v) {  // bf16, round to nearest even (as torch casts finite values)
    uint32_t b;
    std::memcpy(&b, &v, 4);
    *y = (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

template <typename Y>
void write_rows(const float* c, int mr, int nn, Y* y, int64_t ldy, bool add, const float* bias) {
    for (int m = 0; m < mr; ++m)
        for (int n = 0; n < nn; ++n) {
            float v = c[m * NB + n] + (bias ? bias[n] : 0.0f);
            if constexpr (sizeof(Y) == 4) v += add ? y[(int64_t)m * ldy + n] : 0.0f;
            put(y + (int64_t)m * ldy + n, v);
        }
}

template <typename X, typename Y>
void gemm_q8(const Layer& L, const X* x, int M, int64_t ldx, const float* bias, Y* y, int64_t ldy, bool accumulate,
             int max_block, int nthreads) {
    const int ab = block_cols(L, max_block), nblk = (L.Kp + ab - 1) / ab;
    static thread_local std::vector<int8_t> q;
    static thread_local std::vector<float> d, s;
    q.resize((size_t)M * L.Kp);
    d.resize((size_t)M * nblk);
    s.resize((size_t)M * nblk);
    quantize_rows8(L, x, M, ldx, ab, q.data(), d.data(), s.data(), nthreads);
    const int8_t* qp = q.data();  // this thread's buffers: inside the region q, d, s name each thread's own
    const float *dp = d.data(), *sp = s.data();
    const int panels = (L.N + NB - 1) / NB;
#pragma omp parallel num_threads(nthreads)
    {
        static thread_local std::vector<uint8_t> panel;
        panel.resize((size_t)NB * L.Kp);
        alignas(64) float cbuf[MR * NB];
        const int8_t* qr[MR];
        const float *dr[MR], *sr[MR];
#pragma omp for schedule(static)
        for (int p = 0; p < panels; ++p) {
            const int n0 = p * NB, nn = std::min(NB, L.N - n0);
            for (int v = 0; v < NV; ++v) unpack_tile(L, p * NV + v, v, panel.data());
            for (int m0 = 0; m0 < M; m0 += MR) {
                for (int m = 0; m < MR; ++m) {
                    const int row = std::min(m0 + m, M - 1);  // rows past M repeat the last; never stored
                    qr[m] = qp + (int64_t)row * L.Kp;
                    dr[m] = dp + (int64_t)row * nblk;
                    sr[m] = sp + (int64_t)row * nblk;
                }
                micro_q8(L, p, ab, qr, dr, sr, panel.data(), cbuf);
                write_rows(cbuf, std::min(MR, M - m0), nn, y + (int64_t)m0 * ldy + n0, ldy, accumulate,
                           bias ? bias + n0 : nullptr);
            }
        }
    }
}

}  // namespace
#endif

extern "C" {

// Int formats only (kind NIB_INT or BYTES), AVX-512 VNNI builds only (returns 0 elsewhere, having
// done nothing; 1 when done). x: [M, ldx] float32, or bf16 bit patterns (x_bf16); y: float32, or bf16
// (y_bf16, rounded to nearest even; accumulate must be 0); max_block: columns per activation scale at
// most (block_cols); the rest as qgemm_f32 (qgemm.cpp).
int qgemm_q8(const void* x, int M, int64_t ldx, const uint8_t* const* segs, const int* ends, int nseg, int kind,
             int N, int Kp, int G, int wpg, const float* sc, const float* of, const float* bias, void* y,
             int64_t ldy, int accumulate, int x_bf16, int y_bf16, int max_block, int nthreads) {
#if defined(__AVX512VNNI__)
    const Layer L{segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, nullptr};
    const bool acc = accumulate != 0;
    if (x_bf16 && y_bf16) gemm_q8(L, (const uint16_t*)x, M, ldx, bias, (uint16_t*)y, ldy, false, max_block, nthreads);
    else if (x_bf16) gemm_q8(L, (const uint16_t*)x, M, ldx, bias, (float*)y, ldy, acc, max_block, nthreads);
    else if (y_bf16) gemm_q8(L, (const float*)x, M, ldx, bias, (uint16_t*)y, ldy, false, max_block, nthreads);
    else gemm_q8(L, (const float*)x, M, ldx, bias, (float*)y, ldy, acc, max_block, nthreads);
    return 1;
#else
    (void)x, (void)M, (void)ldx, (void)segs, (void)ends, (void)nseg, (void)kind, (void)N, (void)Kp, (void)G;
    (void)wpg, (void)sc, (void)of, (void)bias, (void)y, (void)ldy, (void)accumulate, (void)x_bf16, (void)y_bf16;
    (void)max_block, (void)nthreads;
    return 0;
#endif
}

}  // extern "C"

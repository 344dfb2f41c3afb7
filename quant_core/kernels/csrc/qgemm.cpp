// Batched quantized matmul (prompts, batches from cpu_simd.gemm_rows rows): y[M, N] (+)= x[M, Kp] @ W^T (+ bias).
//
// Dequantizing the whole weight and calling PyTorch's GEMM wrote the float weight out, read it
// back, and the library packed it once more per call: on the 1.1B shapes at M = 512 that took
// twice the float layer's time. Here each thread dequantizes a panel of NB = NV * R weight rows
// into a buffer that stays in L2 (buf[k * NB + lane]: the layout the microkernel loads) and runs
// every block of MR activation rows over it with MR x NV accumulator vectors in registers: the
// packed bytes are read once per call and the float weight never leaves the cache.
//  * fp32: each activation broadcast and FMA'd with NV vectors of weight rows.
//  * bf16 (AVX-512 builds on CPUs with AVX512-BF16): the panel holds bf16 pairs of adjacent
//    columns (round to nearest even, as torch casts), activations bf16, and vdpbf16ps does two
//    products per lane per instruction, summed in fp32. AVX2 builds widen bf16 activations to fp32.
#include <omp.h>

#include <cstring>
#include <vector>

#include "layer.h"

using namespace qk;

namespace {

// Measured on 1.1B shapes at M = 384 (one thread, CPU time): AVX-512 NV 4 x MR 6 199 GFLOP/s in
// bf16 against 183 for 2 x 12 and oneDNN's bf16 GEMM at 202; fewer broadcasts per product.
#if defined(__AVX512F__)
constexpr int NV = 4, MR = 6;  // 4 vectors of weight rows x 6 activation rows: 24 accumulators of 32 registers
#else
constexpr int NV = 2, MR = 6;  // 12 accumulators of the 16 registers
#endif
constexpr int NB = NV * R;  // weight rows per panel
const float kZeroLut[16] = {0};

// bf16 bit pattern in the high half of each lane, rounded to nearest even (finite values).
inline vi round_bf16(vf v) {
    const vi b = vbits(v);
    return vaddi(vaddi(b, vset1i(0x7FFF)), vand(vsrli<16>(b), vset1i(1)));
}

// Columns [k0, k0 + kn) of tile t's rows into lanes [lane0, lane0 + R) of the panel: fp32
// buf[k * NB + lane], or bf16 pairs (BF16) buf[(k / 2) * NB + lane] = column k low, k + 1 high.
template <int KIND, bool BF16>
void dequant_tile(const Layer& L, int t, int k0, int kn, float* buf, int lane0) {
    constexpr int CPW = cols_per_word<KIND>();
    if (t >= L.tiles()) {  // rows past the weight: zeros, never stored
        for (int k = 0; k < (BF16 ? kn / 2 : kn); ++k) vstore(buf + (int64_t)k * NB + lane0, vzero());
        return;
    }
    const Lut lut = make_lut(L.lut ? L.lut : kZeroLut);
    const uint8_t* rows[R];
    L.tile_rows(t, rows);
    const int w0 = k0 / CPW, w1 = (k0 + kn) / CPW;
    for (int c0 = w0; c0 < w1; c0 += R) {
        const int valid = std::min(R, w1 - c0);
        vi cv[R];
        load_tile(rows, 4 * (int64_t)c0, valid, cv);
        Unroll<0, R>::run([&](auto jc) QK_INLINE {
            constexpr int j = decltype(jc)::value;
            if (j >= valid) return;
            const int c = c0 + j, g = c / L.wpg, kk = (c - w0) * CPW;
            const vf s = vload(L.scales(t, g)), o = vload(L.offsets(t, g));
            if constexpr (BF16) {
                Unroll<0, CPW / 2>::run([&](auto ic) QK_INLINE {
                    constexpr int i = decltype(ic)::value;
                    const vi lo = round_bf16(vfma(decode_plain<KIND, 2 * i>(cv[j], lut), s, o));
                    const vi hi = round_bf16(vfma(decode_plain<KIND, 2 * i + 1>(cv[j], lut), s, o));
                    vstorei(buf + (int64_t)(kk / 2 + i) * NB + lane0, vor(vsrli<16>(lo), vand(hi, vset1i(-65536))));
                });
            } else {
                Unroll<0, CPW>::run([&](auto ic) QK_INLINE {
                    constexpr int i = decltype(ic)::value;
                    vstore(buf + (int64_t)(kk + i) * NB + lane0, vfma(decode_plain<KIND, i>(cv[j], lut), s, o));
                });
            }
        });
    }
}

template <bool BF16>
void dequant_panel(const Layer& L, int p, int k0, int kn, float* buf) {
    for (int v = 0; v < NV; ++v) {
        if (L.kind == NIB_INT) dequant_tile<NIB_INT, BF16>(L, p * NV + v, k0, kn, buf, v * R);
        else if (L.kind == NIB_LUT) dequant_tile<NIB_LUT, BF16>(L, p * NV + v, k0, kn, buf, v * R);
        else dequant_tile<BYTES, BF16>(L, p * NV + v, k0, kn, buf, v * R);
    }
}

// c[m * NB + lane] = sum over kn columns of x[m][k] * panel[k][lane], for MR rows.
void micro_f32(const float* const* xr, int kn, const float* buf, float* c) {
    vf acc[MR][NV];
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
        for (int v = 0; v < NV; ++v) acc[m][v] = vzero();
    for (int k = 0; k < kn; ++k) {
        vf b[NV];
        for (int v = 0; v < NV; ++v) b[v] = vload(buf + (int64_t)k * NB + v * R);
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
            const vf a = vset1(xr[m][k]);
            for (int v = 0; v < NV; ++v) acc[m][v] = vfma(a, b[v], acc[m][v]);
        }
    }
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
        for (int v = 0; v < NV; ++v) vstore(c + m * NB + v * R, acc[m][v]);
}

#if defined(__AVX512F__)
// The same over bf16 pairs: x rows are bf16, the panel holds pairs of adjacent columns.
__attribute__((target("avx512bf16"))) void micro_bf16(const uint16_t* const* xr, int kn, const float* buf, float* c) {
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
        for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_setzero_ps();
    for (int kp = 0; kp < kn / 2; ++kp) {
        __m512bh b[NV];
        for (int v = 0; v < NV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(buf + (int64_t)kp * NB + v * R);
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
            int32_t pair;
            std::memcpy(&pair, xr[m] + 2 * kp, 4);
            const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
            for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], a, b[v]);
        }
    }
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m)
        for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + m * NB + v * R, acc[m][v]);
}
#endif

inline void put(float* y, float v) { *y = v; }
inline void put(uint16_t* y, float v) {  // bf16, round to nearest even (as torch casts finite values)
    uint32_t b;
    std::memcpy(&b, &v, 4);
    *y = (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

// A block's results into y (mr rows, nn columns): stored, or added to what y holds (float y only); + bias.
void write_block(const float* c, int mr, int nn, float* y, int64_t ldy, bool add, const float* bias) {
    for (int m = 0; m < mr; ++m) {
        float* ym = y + (int64_t)m * ldy;
        const float* cm = c + m * NB;
        if (nn == NB) {
            for (int v = 0; v < NV; ++v) {
                vf r = vload(cm + v * R);
                if (bias) r = vadd(r, vload(bias + v * R));
                if (add) r = vadd(r, vload(ym + v * R));
                vstore(ym + v * R, r);
            }
        } else {
            for (int n = 0; n < nn; ++n) ym[n] = cm[n] + (bias ? bias[n] : 0.0f) + (add ? ym[n] : 0.0f);
        }
    }
}

void write_block(const float* c, int mr, int nn, uint16_t* y, int64_t ldy, bool, const float* bias) {
    for (int m = 0; m < mr; ++m)
        for (int n = 0; n < nn; ++n) put(y + (int64_t)m * ldy + n, c[m * NB + n] + (bias ? bias[n] : 0.0f));
}

// Per thread: a panel of NB weight rows over all Kp columns is dequantized once (NB * Kp floats:
// 256-704 KiB on the 1.1B shapes, in L2), then every block of MR rows runs the whole K in registers
// and writes its final results once (in y's dtype: a bf16 model gets bf16 without a cast pass).
// Against 256-column chunks whose partial sums went through y: 41.3 ms against 43.0 (bf16, M = 384,
// 2048x5632, one thread; oneDNN's bf16 F.linear 42.3).
template <bool BF16, typename X, typename Y, typename Micro>
void gemm(const Layer& L, const X* x, int M, int64_t ldx, const float* bias, Y* y, int64_t ldy, bool accumulate,
          int nthreads, Micro micro) {
    const int panels = (L.N + NB - 1) / NB;
#pragma omp parallel num_threads(nthreads)
    {
        static thread_local std::vector<float> panel;
        panel.resize((size_t)NB * L.Kp);
        alignas(64) float cbuf[MR * NB];
        const X* xr[MR];
#pragma omp for schedule(static)
        for (int p = 0; p < panels; ++p) {
            const int n0 = p * NB, nn = std::min(NB, L.N - n0);
            dequant_panel<BF16>(L, p, 0, L.Kp, panel.data());
            for (int m0 = 0; m0 < M; m0 += MR) {
                for (int m = 0; m < MR; ++m) xr[m] = x + (int64_t)std::min(m0 + m, M - 1) * ldx;
                micro(xr, L.Kp, panel.data(), cbuf);  // rows past M repeat the last row; never stored
                write_block(cbuf, std::min(MR, M - m0), nn, y + (int64_t)m0 * ldy + n0, ldy, accumulate,
                            bias ? bias + n0 : nullptr);
            }
        }
    }
}

}  // namespace

extern "C" {

// x: float32 [M, ldx] (columns in weight order, zero-padded to Kp); y[m * ldy + n] = (x @ W^T)[m, n]
// (+ bias[n], padded to whole tiles, or null; + y[m * ldy + n] itself when accumulate).
void qgemm_f32(const float* x, int M, int64_t ldx, const uint8_t* const* segs, const int* ends, int nseg, int kind,
               int N, int Kp, int G, int wpg, const float* sc, const float* of, const float* lut, const float* bias,
               float* y, int64_t ldy, int accumulate, int nthreads) {
    const Layer L{segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, lut};
    gemm<false>(L, x, M, ldx, bias, y, ldy, accumulate != 0, nthreads, micro_f32);
}

// The same with bf16 activations (bit patterns): a bf16 GEMM on AVX-512 builds (call it only
// where the CPU has AVX512-BF16); AVX2 builds widen the rows to fp32 (exactly) and run the fp32
// one. y_bf16: y holds bf16 (rounded to nearest even; accumulate must be 0), else float32.
void qgemm_bf16(const uint16_t* x, int M, int64_t ldx, const uint8_t* const* segs, const int* ends, int nseg,
                int kind, int N, int Kp, int G, int wpg, const float* sc, const float* of, const float* lut,
                const float* bias, void* y, int64_t ldy, int accumulate, int y_bf16, int nthreads) {
    const Layer L{segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, lut};
#if defined(__AVX512F__)
    if (y_bf16) gemm<true>(L, x, M, ldx, bias, (uint16_t*)y, ldy, false, nthreads, micro_bf16);
    else gemm<true>(L, x, M, ldx, bias, (float*)y, ldy, accumulate != 0, nthreads, micro_bf16);
#else
    std::vector<float> wide((size_t)M * Kp);
    for (int m = 0; m < M; ++m)
        for (int k = 0; k < Kp; ++k) {
            const uint32_t bits = (uint32_t)x[(int64_t)m * ldx + k] << 16;
            std::memcpy(&wide[(size_t)m * Kp + k], &bits, 4);
        }
    if (y_bf16) gemm<false>(L, wide.data(), M, (int64_t)Kp, bias, (uint16_t*)y, ldy, false, nthreads, micro_f32);
    else gemm<false>(L, wide.data(), M, (int64_t)Kp, bias, (float*)y, ldy, accumulate != 0, nthreads, micro_f32);
#endif
}

}  // extern "C"

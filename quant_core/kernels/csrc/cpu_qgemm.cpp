// Weight-only quantized GEMM for x86 CPUs (AVX2+FMA, or AVX-512 when compiled with it).
//
// Built at first use by quant_core/kernels/cpu_build.py with plain g++ (no torch headers,
// so a build takes seconds) once per ISA variant, and called through ctypes.
//
// Kernel weight layout (made by cpu_repack.py from the checkpoint layout, once at load):
//   K is padded to Kp, a multiple of 32; a "block" is 32 consecutive input columns.
//   nibble layout (formats of <= 4 bits): 16 bytes per block; byte j holds the code of
//     column j in its low nibble and column 16 + j in its high nibble (so unpacking gives
//     contiguous columns without shuffles). The checkpoint's int4 bytes pair columns 2j and
//     2j + 1 instead; Python permutes the activations within each block to match, so
//     checkpoint bytes are used as they are, without a second copy of the weight.
//   byte layout (int8): one unsigned code byte per column (the checkpoint's bytes).
//   Group g of a row covers blocks [g * gsb, (g + 1) * gsb) (the last group may be partial).
// Dequantized weight: w = val(code) * scale[n, g] + off[n, g], where val is the code itself
// (int formats; offsets fold the zero point in) or lut[code] (codebook formats, off = 0).
// So y[m, n] = sum_g scale * sum_{k in g} val * x[m, k] + off * xsum[m, g].
#include <immintrin.h>
#include <omp.h>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace {

#if defined(__AVX512F__)
constexpr int W = 16;  // floats per vector
typedef __m512 vf;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vset1(float a) { return _mm512_set1_ps(a); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline float vhsum(vf v) { return _mm512_reduce_add_ps(v); }
struct Lut { __m512 t; };
inline Lut make_lut(const float* lut) { Lut l; l.t = _mm512_loadu_ps(lut); return l; }
// 16 codes (bytes) -> 16 floats
inline vf cvt_u8(__m128i c) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(c)); }
inline vf lut_u8(__m128i c, const Lut& l) { return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c), l.t); }
// Decode one 32-column block of the nibble layout into 2 vectors.
template <bool CB>
inline void decode_nibbles(const uint8_t* p, const Lut& l, vf* out) {
    const __m128i b = _mm_loadu_si128((const __m128i*)p);
    const __m128i m = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    if (CB) { out[0] = lut_u8(lo, l); out[1] = lut_u8(hi, l); }
    else { out[0] = cvt_u8(lo); out[1] = cvt_u8(hi); }
}
inline void decode_bytes(const uint8_t* p, vf* out) {
    out[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p)));
    out[1] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + 16))));
}
#else
constexpr int W = 8;
typedef __m256 vf;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vset1(float a) { return _mm256_set1_ps(a); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline float vhsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
struct Lut { __m256 lo, hi; };
inline Lut make_lut(const float* lut) { Lut l; l.lo = _mm256_loadu_ps(lut); l.hi = _mm256_loadu_ps(lut + 8); return l; }
inline vf cvt_u8(__m128i c) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c)); }
// 16-entry lookup with two 8-entry permutes, picked by bit 3 of the code.
inline vf lut_u8(__m128i c, const Lut& l) {
    const __m256i idx = _mm256_cvtepu8_epi32(c);
    const __m256 a = _mm256_permutevar8x32_ps(l.lo, idx), b = _mm256_permutevar8x32_ps(l.hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
template <bool CB>
inline void decode_nibbles(const uint8_t* p, const Lut& l, vf* out) {
    const __m128i b = _mm_loadu_si128((const __m128i*)p);
    const __m128i m = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    if (CB) {
        out[0] = lut_u8(lo, l); out[1] = lut_u8(_mm_srli_si128(lo, 8), l);
        out[2] = lut_u8(hi, l); out[3] = lut_u8(_mm_srli_si128(hi, 8), l);
    } else {
        out[0] = cvt_u8(lo); out[1] = cvt_u8(_mm_srli_si128(lo, 8));
        out[2] = cvt_u8(hi); out[3] = cvt_u8(_mm_srli_si128(hi, 8));
    }
}
inline void decode_bytes(const uint8_t* p, vf* out) {
    for (int i = 0; i < 4; ++i)
        out[i] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(p + 8 * i))));
}
#endif

constexpr int VPB = 32 / W;  // vectors per 32-column block

template <bool BYTES, bool CB>
inline void decode_block(const uint8_t* row, int b, const Lut& l, vf* out) {
    if (BYTES) decode_bytes(row + 32 * b, out);
    else decode_nibbles<CB>(row + 16 * b, l, out);
}

// MT activation rows against one weight row n: weights are decoded once per block and
// reused for every activation row. NA independent accumulators per row hide FMA latency.
template <int MT, bool BYTES, bool CB>
void rows_f32(const float* x, int ldx, const float* xsum, const uint8_t* w, int N, int Kp, int G,
              int gsb, const float* scales, const float* offs, const Lut& lut, float* y, int ldy,
              int n0, int n1) {
    constexpr int NA = MT == 1 ? VPB : 1;
    const int nb = Kp / 32;
    const int row_bytes = BYTES ? Kp : Kp / 2;
    for (int n = n0; n < n1; ++n) {
        const uint8_t* row = w + (int64_t)n * row_bytes;
        vf tot[MT];
        for (int m = 0; m < MT; ++m) tot[m] = vzero();
        float offsum[MT] = {0};
        for (int g = 0; g < G; ++g) {
            vf acc[MT][NA];
            for (int m = 0; m < MT; ++m)
                for (int a = 0; a < NA; ++a) acc[m][a] = vzero();
            const int b1 = (g + 1) * gsb < nb ? (g + 1) * gsb : nb;
            for (int b = g * gsb; b < b1; ++b) {
                vf wv[VPB];
                decode_block<BYTES, CB>(row, b, lut, wv);
                for (int m = 0; m < MT; ++m) {
                    const float* xp = x + (int64_t)m * ldx + 32 * b;
                    for (int v = 0; v < VPB; ++v) acc[m][v % NA] = vfma(wv[v], vload(xp + v * W), acc[m][v % NA]);
                }
            }
            const float s = scales[(int64_t)n * G + g], o = offs[(int64_t)n * G + g];
            const vf sv = vset1(s);
            for (int m = 0; m < MT; ++m) {
                vf a = acc[m][0];
                for (int i = 1; i < NA; ++i) a = vadd(a, acc[m][i]);
                tot[m] = vfma(a, sv, tot[m]);
                offsum[m] += o * xsum[m * G + g];
            }
        }
        for (int m = 0; m < MT; ++m) y[(int64_t)m * ldy + n] = vhsum(tot[m]) + offsum[m];
    }
}

template <bool BYTES, bool CB>
void gemm_f32(const float* x, int M, const uint8_t* w, int N, int Kp, int G, int gsb,
              const float* scales, const float* offs, const float* lutp, float* y, int nthreads) {
    const int nb = Kp / 32;
    float* xsum = new float[(int64_t)M * G];
    for (int m = 0; m < M; ++m)
        for (int g = 0; g < G; ++g) {
            float s = 0;
            const int k1 = ((g + 1) * gsb < nb ? (g + 1) * gsb : nb) * 32;
            for (int k = g * gsb * 32; k < k1; ++k) s += x[(int64_t)m * Kp + k];
            xsum[m * G + g] = s;
        }
    float zl[16] = {0};
    const Lut lut = make_lut(lutp ? lutp : zl);
    // Split rows across threads in chunks of 16 so each thread streams its own weight rows.
    const int chunks = (N + 15) / 16;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int c = 0; c < chunks; ++c) {
        const int n0 = c * 16, n1 = n0 + 16 < N ? n0 + 16 : N;
        int m = 0;
        // Tiles of 4 rows share one decode of the weights. (A tile of 8 measured slower than two
        // of 4 on AVX-512: 3.9 ms vs 2.2 ms for 7 rows of a 2048x5632 int4 layer, one thread.)
        for (; m + 4 <= M; m += 4)
            rows_f32<4, BYTES, CB>(x + (int64_t)m * Kp, Kp, xsum + m * G, w, N, Kp, G, gsb, scales, offs, lut, y + (int64_t)m * N, N, n0, n1);
        switch (M - m) {
            case 3: rows_f32<3, BYTES, CB>(x + (int64_t)m * Kp, Kp, xsum + m * G, w, N, Kp, G, gsb, scales, offs, lut, y + (int64_t)m * N, N, n0, n1); break;
            case 2: rows_f32<2, BYTES, CB>(x + (int64_t)m * Kp, Kp, xsum + m * G, w, N, Kp, G, gsb, scales, offs, lut, y + (int64_t)m * N, N, n0, n1); break;
            case 1: rows_f32<1, BYTES, CB>(x + (int64_t)m * Kp, Kp, xsum + m * G, w, N, Kp, G, gsb, scales, offs, lut, y + (int64_t)m * N, N, n0, n1); break;
            default: break;
        }
    }
    delete[] xsum;
}

// ---- int8 activations (per-token symmetric) times integer weight codes ----
// Dot products of one 32-column block, as 8 int32 lanes.
inline __m256i dot_nibbles_i8(const uint8_t* p, const int8_t* q) {
    const __m128i b = _mm_loadu_si128((const __m128i*)p);
    const __m128i m = _mm_set1_epi8(0x0F);
    const __m256i u = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
    const __m256i qv = _mm256_loadu_si256((const __m256i*)q);
#if defined(__AVX512VNNI__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, qv);
#else
    // u <= 15 and |q| <= 127: pair sums stay below 2^15, so maddubs cannot saturate.
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, qv), _mm256_set1_epi16(1));
#endif
}
inline __m256i dot_bytes_i8(const uint8_t* p, const int8_t* q) {
    // Unsigned codes x signed activations, widened to 16 bits (maddubs would saturate:
    // 255 * 127 * 2 > 2^15); madd's pair sums (< 2^16 * 2) fit its int32 lanes.
    const __m256i w0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)p));
    const __m256i w1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(p + 16)));
    const __m256i q0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)q));
    const __m256i q1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(q + 16)));
    return _mm256_add_epi32(_mm256_madd_epi16(w0, q0), _mm256_madd_epi16(w1, q1));
}
inline float hsum_i32_as_f32(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <bool BYTES>
void gemm_i8(const int8_t* q, const float* qscale, int M, const uint8_t* w, int N, int Kp, int G,
             int gsb, const float* scales, const float* offs, float* y, int nthreads) {
    const int nb = Kp / 32;
    const int row_bytes = BYTES ? Kp : Kp / 2;
    float* qsum = new float[(int64_t)M * G];
    for (int m = 0; m < M; ++m)
        for (int g = 0; g < G; ++g) {
            int32_t s = 0;
            const int k1 = ((g + 1) * gsb < nb ? (g + 1) * gsb : nb) * 32;
            for (int k = g * gsb * 32; k < k1; ++k) s += q[(int64_t)m * Kp + k];
            qsum[m * G + g] = (float)s;
        }
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int n = 0; n < N; ++n) {
        const uint8_t* row = w + (int64_t)n * row_bytes;
        for (int m = 0; m < M; ++m) {
            const int8_t* qm = q + (int64_t)m * Kp;
            __m256 tot = _mm256_setzero_ps();
            float offsum = 0;
            for (int g = 0; g < G; ++g) {
                __m256i acc = _mm256_setzero_si256();
                const int b1 = (g + 1) * gsb < nb ? (g + 1) * gsb : nb;
                for (int b = g * gsb; b < b1; ++b)
                    acc = _mm256_add_epi32(acc, BYTES ? dot_bytes_i8(row + 32 * b, qm + 32 * b)
                                                      : dot_nibbles_i8(row + 16 * b, qm + 32 * b));
                tot = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(scales[(int64_t)n * G + g]), tot);
                offsum += offs[(int64_t)n * G + g] * qsum[m * G + g];
            }
            y[(int64_t)m * N + n] = (hsum_i32_as_f32(tot) + offsum) * qscale[m];
        }
    }
    delete[] qsum;
}

// fp32 -> bf16 bits, round to nearest even (weights are finite); a plain loop the compiler vectorizes
static inline void to_bf16(const float* src, uint16_t* dst, int n) {
    for (int i = 0; i < n; ++i) {
        uint32_t b;
        std::memcpy(&b, src + i, 4);
        dst[i] = (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
    }
}

// Rows of the weight as float32 (OUT = float) or as bf16 bits (OUT = uint16_t, for a bf16 GEMM).
template <bool BYTES, bool CB, typename OUT>
void dequant(const uint8_t* w, int N, int Kp, int G, int gsb, const float* scales, const float* offs,
             const float* lutp, OUT* out, int nthreads) {
    const int nb = Kp / 32;
    const int row_bytes = BYTES ? Kp : Kp / 2;
    float zl[16] = {0};
    const Lut lut = make_lut(lutp ? lutp : zl);
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int n = 0; n < N; ++n) {
        const uint8_t* row = w + (int64_t)n * row_bytes;
        alignas(64) float tmp[32];
        for (int b = 0; b < nb; ++b) {
            const int g = b / gsb;
            const vf s = vset1(scales[(int64_t)n * G + g]), o = vset1(offs[(int64_t)n * G + g]);
            vf wv[VPB];
            decode_block<BYTES, CB>(row, b, lut, wv);
            OUT* dst = out + (int64_t)n * Kp + 32 * b;
            if constexpr (std::is_same_v<OUT, float>) {
                for (int v = 0; v < VPB; ++v) vstore(dst + v * W, vfma(wv[v], s, o));
            } else {
                for (int v = 0; v < VPB; ++v) vstore(tmp + v * W, vfma(wv[v], s, o));
                to_bf16(tmp, dst, 32);
            }
        }
    }
}

template <typename OUT>
void dequant_any(const uint8_t* w, int layout, int N, int Kp, int G, int gsb, const float* scales,
                 const float* offs, const float* lut, OUT* out, int nthreads) {
    if (layout == 1) dequant<true, false>(w, N, Kp, G, gsb, scales, offs, nullptr, out, nthreads);
    else if (lut) dequant<false, true>(w, N, Kp, G, gsb, scales, offs, lut, out, nthreads);
    else dequant<false, false>(w, N, Kp, G, gsb, scales, offs, nullptr, out, nthreads);
}

}  // namespace

extern "C" {

// layout: 0 = nibbles (<= 4-bit codes), 1 = signed bytes (int8). lut: 16 floats for codebook formats, else null.
void qgemm_f32(const float* x, int M, const uint8_t* w, int layout, int N, int Kp, int G, int gsb,
               const float* scales, const float* offs, const float* lut, float* y, int nthreads) {
    if (layout == 1) gemm_f32<true, false>(x, M, w, N, Kp, G, gsb, scales, offs, nullptr, y, nthreads);
    else if (lut) gemm_f32<false, true>(x, M, w, N, Kp, G, gsb, scales, offs, lut, y, nthreads);
    else gemm_f32<false, false>(x, M, w, N, Kp, G, gsb, scales, offs, nullptr, y, nthreads);
}

void qgemm_i8(const int8_t* q, const float* qscale, int M, const uint8_t* w, int layout, int N, int Kp,
              int G, int gsb, const float* scales, const float* offs, float* y, int nthreads) {
    if (layout == 1) gemm_i8<true>(q, qscale, M, w, N, Kp, G, gsb, scales, offs, y, nthreads);
    else gemm_i8<false>(q, qscale, M, w, N, Kp, G, gsb, scales, offs, y, nthreads);
}

void qdequant(const uint8_t* w, int layout, int N, int Kp, int G, int gsb, const float* scales,
              const float* offs, const float* lut, float* out, int nthreads) {
    dequant_any(w, layout, N, Kp, G, gsb, scales, offs, lut, out, nthreads);
}

// Same rows as qdequant, written as bf16 (for a bf16 GEMM on CPUs with bf16 units).
void qdequant_bf16(const uint8_t* w, int layout, int N, int Kp, int G, int gsb, const float* scales,
                   const float* offs, const float* lut, uint16_t* out, int nthreads) {
    dequant_any(w, layout, N, Kp, G, gsb, scales, offs, lut, out, nthreads);
}

// Which variant this library is; Python checks it against the file it meant to load.
const char* qisa() {
#if defined(__AVX512VNNI__)
    return "avx512_vnni";
#elif defined(__AVX512F__)
    return "avx512";
#else
    return "avx2";
#endif
}

}  // extern "C"

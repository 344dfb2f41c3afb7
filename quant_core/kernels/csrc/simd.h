// Vector helpers for the CPU kernels: one set of names for AVX2 (8 lanes) and AVX-512 (16 lanes).
//
// Every kernel works on "tiles" of R weight rows: after a transpose in registers, lane r of a
// vector holds 32 bits of row r (8 four-bit codes or 4 byte codes, in column order), so one
// FMA or dot-product instruction advances R output rows at once and no horizontal sums are
// needed. The weight bytes stay in the checkpoint's row-major layout (no second copy).
#pragma once
#include <immintrin.h>
#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace qk {

// Bodies of Unroll loops: GCC otherwise left some iterations of the hot tile loops out of line, as
// calls that kept every accumulator in memory (seen with nm and perf: tile_i16<4>'s j = 2, 12, 15).
#define QK_INLINE __attribute__((always_inline))

// Compile-time loop: f(std::integral_constant<int, I>) for I in [B, E), so shift counts stay immediates.
template <int B, int E>
struct Unroll {
    template <class F>
    static inline __attribute__((always_inline)) void run(F&& f) {
        if constexpr (B < E) {
            f(std::integral_constant<int, B>{});
            Unroll<B + 1, E>::run(f);
        }
    }
};

#if defined(__AVX512F__)
constexpr int R = 16;
typedef __m512 vf;
typedef __m512i vi;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vi vzeroi() { return _mm512_setzero_si512(); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vset1(float a) { return _mm512_set1_ps(a); }
inline vi vset1i(int a) { return _mm512_set1_epi32(a); }
inline vi vbcast32(const void* p) { return _mm512_set1_epi32(*(const int32_t*)p); }
inline vi vand(vi a, vi b) { return _mm512_and_si512(a, b); }
inline vi vaddi(vi a, vi b) { return _mm512_add_epi32(a, b); }
inline vi vor(vi a, vi b) { return _mm512_or_si512(a, b); }
inline vi vbits(vf a) { return _mm512_castps_si512(a); }
inline vi vloadi(const void* p) { return _mm512_loadu_si512(p); }
inline void vstorei(void* p, vi v) { _mm512_storeu_si512(p, v); }
template <int S> inline vi vsrli(vi a) { return S ? _mm512_srli_epi32(a, S) : a; }
template <int S> inline vi vsrai(vi a) { return _mm512_srai_epi32(a, S); }
inline vf vcvt(vi a) { return _mm512_cvtepi32_ps(a); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf vround(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// p * 2^n for integral n in [-127, 127]
inline vf vscale2(vf p, vf n) {
    const vi e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}
inline float vhsum(vf v) { return _mm512_reduce_add_ps(v); }
inline float vhmax(vf v) { return _mm512_reduce_max_ps(v); }

struct Lut { __m512 t; };
inline Lut make_lut(const float* p) { return Lut{_mm512_loadu_ps(p)}; }
// Level of nibble I of every lane: vpermps reads only the low 4 bits of each index.
template <int I> inline vf lut_nibble(vi v, const Lut& l) { return _mm512_permutexvar_ps(vsrli<4 * I>(v), l.t); }

// 16 words (64 bytes) from each of 16 rows, transposed: out[j] lane r = word j of row r.
// Words at or past `valid` are not read (masked loads stop at the end of a row).
inline void load_tile(const uint8_t* const* rows, int64_t off, int valid, vi* out) {
    const __mmask16 m = valid >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << valid) - 1);
    vi a[16], b[16];
    for (int r = 0; r < 16; ++r) a[r] = _mm512_maskz_loadu_epi32(m, rows[r] + off);
    for (int r = 0; r < 16; r += 2) {
        b[r] = _mm512_unpacklo_epi32(a[r], a[r + 1]);
        b[r + 1] = _mm512_unpackhi_epi32(a[r], a[r + 1]);
    }
    for (int r = 0; r < 16; r += 4) {
        a[r] = _mm512_unpacklo_epi64(b[r], b[r + 2]);
        a[r + 1] = _mm512_unpackhi_epi64(b[r], b[r + 2]);
        a[r + 2] = _mm512_unpacklo_epi64(b[r + 1], b[r + 3]);
        a[r + 3] = _mm512_unpackhi_epi64(b[r + 1], b[r + 3]);
    }
    // Now a[4q + s], 128-bit block p, holds word 4p + s of rows 4q..4q+3: move the blocks so that
    // out[4p + s] has them in row order.
    for (int s = 0; s < 4; ++s) {
        const vi q0 = a[s], q1 = a[4 + s], q2 = a[8 + s], q3 = a[12 + s];
        const vi t0 = _mm512_shuffle_i32x4(q0, q1, 0x88), t1 = _mm512_shuffle_i32x4(q0, q1, 0xDD);
        const vi t2 = _mm512_shuffle_i32x4(q2, q3, 0x88), t3 = _mm512_shuffle_i32x4(q2, q3, 0xDD);
        out[s] = _mm512_shuffle_i32x4(t0, t2, 0x88);       // block 0: words s
        out[8 + s] = _mm512_shuffle_i32x4(t0, t2, 0xDD);   // block 2: words 8 + s
        out[4 + s] = _mm512_shuffle_i32x4(t1, t3, 0x88);   // block 1: words 4 + s
        out[12 + s] = _mm512_shuffle_i32x4(t1, t3, 0xDD);  // block 3: words 12 + s
    }
}
#else
constexpr int R = 8;
typedef __m256 vf;
typedef __m256i vi;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vi vzeroi() { return _mm256_setzero_si256(); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vset1(float a) { return _mm256_set1_ps(a); }
inline vi vset1i(int a) { return _mm256_set1_epi32(a); }
inline vi vbcast32(const void* p) { return _mm256_set1_epi32(*(const int32_t*)p); }
inline vi vand(vi a, vi b) { return _mm256_and_si256(a, b); }
inline vi vaddi(vi a, vi b) { return _mm256_add_epi32(a, b); }
inline vi vor(vi a, vi b) { return _mm256_or_si256(a, b); }
inline vi vbits(vf a) { return _mm256_castps_si256(a); }
inline vi vloadi(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }
inline void vstorei(void* p, vi v) { _mm256_storeu_si256((__m256i*)p, v); }
template <int S> inline vi vsrli(vi a) { return S ? _mm256_srli_epi32(a, S) : a; }
template <int S> inline vi vsrai(vi a) { return _mm256_srai_epi32(a, S); }
template <int S> inline vi vslli(vi a) { return S ? _mm256_slli_epi32(a, S) : a; }
inline vf vcvt(vi a) { return _mm256_cvtepi32_ps(a); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf vround(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf vscale2(vf p, vf n) {
    const vi e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
inline float vhsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float vhmax(vf v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

struct Lut { __m256 lo, hi; };
inline Lut make_lut(const float* p) { return Lut{_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
// Two 8-entry permutes (low 3 bits of the index), picked by bit 3 moved to the sign bit.
template <int I> inline vf lut_nibble(vi v, const Lut& l) {
    const vi s = vsrli<4 * I>(v);
    const vf a = _mm256_permutevar8x32_ps(l.lo, s), b = _mm256_permutevar8x32_ps(l.hi, s);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(vslli<28 - 4 * I>(v)));
}

// 8 words (32 bytes) from each of 8 rows, transposed: out[j] lane r = word j of row r.
inline void load_tile(const uint8_t* const* rows, int64_t off, int valid, vi* out) {
    vi a[8];
    if (valid >= 8) {
        for (int r = 0; r < 8; ++r) a[r] = _mm256_loadu_si256((const __m256i*)(rows[r] + off));
    } else {  // the end of a row: masked loads read nothing past it
        const vi m = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int r = 0; r < 8; ++r) a[r] = _mm256_maskload_epi32((const int*)(rows[r] + off), m);
    }
    vi b[8];
    for (int r = 0; r < 8; r += 2) {
        b[r] = _mm256_unpacklo_epi32(a[r], a[r + 1]);
        b[r + 1] = _mm256_unpackhi_epi32(a[r], a[r + 1]);
    }
    for (int r = 0; r < 8; r += 4) {
        a[r] = _mm256_unpacklo_epi64(b[r], b[r + 2]);
        a[r + 1] = _mm256_unpackhi_epi64(b[r], b[r + 2]);
        a[r + 2] = _mm256_unpacklo_epi64(b[r + 1], b[r + 3]);
        a[r + 3] = _mm256_unpackhi_epi64(b[r + 1], b[r + 3]);
    }
    for (int s = 0; s < 4; ++s) {
        out[s] = _mm256_permute2x128_si256(a[s], a[4 + s], 0x20);
        out[4 + s] = _mm256_permute2x128_si256(a[s], a[4 + s], 0x31);
    }
}
#endif

// Prefetches the next tile's rows one after the other while the current tile is computed. The
// tile itself reads R rows side by side, 32 or 64 bytes of each in turn, a pattern the hardware
// prefetchers follow poorly: a plain read loop measured 10 GB/s that way against 25 GB/s in
// address order; with this it reads 22-31 GB/s. Call step() once per block of the current tile.
struct TilePrefetch {
    const uint8_t* rows[R];
    int64_t lines_per_row, total, issued = 0, per_step;
    bool to_l1;

    TilePrefetch(const uint8_t* const* next, int64_t row_bytes, int steps) {
        for (int r = 0; r < R; ++r) rows[r] = next[r];
        lines_per_row = (row_bytes + 63) / 64;
        total = lines_per_row * R;
        per_step = (total + steps - 1) / steps;
        to_l1 = R * row_bytes <= 16384;  // larger tiles would push the current one out of L1
    }
    inline void step() {
        const int64_t upto = std::min(total, issued + per_step);
        for (; issued < upto; ++issued) {
            const char* p = (const char*)(rows[issued / lines_per_row] + 64 * (issued % lines_per_row));
            if (to_l1) _mm_prefetch(p, _MM_HINT_T0);
            else _mm_prefetch(p, _MM_HINT_T1);
        }
    }
};

// e^x to about 1e-7 relative (Cephes' expf polynomial on x - n ln2, scaled by 2^n); 0 below -87.
inline vf vexp(vf x) {
    x = vmax(x, vset1(-87.0f));
    x = vmin(x, vset1(88.0f));
    const vf n = vround(vmul(x, vset1(1.44269504088896341f)));
    const vf r = vfma(n, vset1(-1.42860682e-6f), vfma(n, vset1(-0.693145751953125f), x));
    vf p = vset1(1.9875691500e-4f);
    p = vfma(p, r, vset1(1.3981999507e-3f));
    p = vfma(p, r, vset1(8.3334519073e-3f));
    p = vfma(p, r, vset1(4.1665795894e-2f));
    p = vfma(p, r, vset1(1.6666665459e-1f));
    p = vfma(p, r, vset1(5.0000001201e-1f));
    p = vadd(vfma(p, vmul(r, r), r), vset1(1.0f));
    return vscale2(p, n);
}

// ---- int16 dot products: acc + lane sums of 2 (code as int16 x int16 activation) ----
#if defined(__AVX512VNNI__)
inline vi dot2(vi acc, vi a, vi b) { return _mm512_dpwssd_epi32(acc, a, b); }
#elif defined(__AVX512F__)
inline vi dot2(vi acc, vi a, vi b) { return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b)); }
#else
inline vi dot2(vi acc, vi a, vi b) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)); }
#endif

// ---- int8 dot products: lane sums of 4 (unsigned code byte x signed activation byte) ----
#if defined(__AVX512VNNI__)
constexpr bool kVnni = true;
inline vi dot4(vi acc, vi u, vi q) { return _mm512_dpbusd_epi32(acc, u, q); }
// Two nibble halves (codes <= 15) into one accumulator.
inline vi dot_nibbles(vi acc, vi lo, vi hi, vi qa, vi qb) { return dot4(dot4(acc, lo, qa), hi, qb); }
// Byte codes (<= 255): dpbusd takes them unsigned as they are.
inline vi dot_bytes(vi acc, vi u, vi q) { return dot4(acc, u, q); }
#else
constexpr bool kVnni = false;
#if defined(__AVX512F__)
inline vi maddubs(vi u, vi q) { return _mm512_maddubs_epi16(u, q); }
inline vi madd1(vi p) { return _mm512_madd_epi16(p, _mm512_set1_epi16(1)); }
inline vi add16(vi a, vi b) { return _mm512_add_epi16(a, b); }
// |w| and q with w's sign (AVX-512 has no vpsignb)
inline vi abs8(vi w) { return _mm512_abs_epi8(w); }
inline vi sign8(vi q, vi w) { return _mm512_mask_sub_epi8(q, _mm512_movepi8_mask(w), _mm512_setzero_si512(), q); }
inline vi xor80(vi u) { return _mm512_xor_si512(u, _mm512_set1_epi8((char)0x80)); }
#else
inline vi maddubs(vi u, vi q) { return _mm256_maddubs_epi16(u, q); }
inline vi madd1(vi p) { return _mm256_madd_epi16(p, _mm256_set1_epi16(1)); }
inline vi add16(vi a, vi b) { return _mm256_add_epi16(a, b); }
inline vi abs8(vi w) { return _mm256_abs_epi8(w); }
inline vi sign8(vi q, vi w) { return _mm256_sign_epi8(q, w); }
inline vi xor80(vi u) { return _mm256_xor_si256(u, _mm256_set1_epi8((char)0x80)); }
#endif
// Codes <= 15 and |q| <= 127: each int16 pair sum is <= 3810, two of them fit before widening.
inline vi dot_nibbles(vi acc, vi lo, vi hi, vi qa, vi qb) {
    return vaddi(acc, madd1(add16(maddubs(lo, qa), maddubs(hi, qb))));
}
// Byte codes would saturate maddubs (255 * 127 * 2 > 2^15): use the signed code u - 128 instead,
// |u - 128| <= 128 so pair sums stay <= 32512; the caller adds 128 * sum(q) back (kBytesBias).
inline vi dot_bytes(vi acc, vi u, vi q) {
    const vi w = xor80(u);
    return vaddi(acc, madd1(maddubs(abs8(w), sign8(q, w))));
}
#endif
constexpr float kBytesBias = kVnni ? 0.0f : 128.0f;

}  // namespace qk

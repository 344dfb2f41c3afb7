// One 32-column block of activations to int16 with AVX2 (the row kernels' quantize step, which
// runs on one thread before the parallel loop over tiles: scalar, it took ~10 us of a 5632-column
// decode GEMV whose 2 threads read the weights in ~0.2 ms).
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace qk {

// q[k] = x[k] * qmax / max|x| rounded half to even (the default rounding mode, as std::nearbyint);
// returns max|x| (0: all q are 0) and adds sum(q) to *qsum.
inline float quantize_block32(const float* x, float qmax, int32_t* q, int32_t* qsum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], m = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    const __m256 inv = _mm256_set1_ps(amax > 0.0f ? qmax / amax : 0.0f);
    __m256i s = _mm256_setzero_si256();
    for (int i = 0; i < 4; ++i) {
        const __m256i qi = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
        _mm256_storeu_si256((__m256i*)(q + 8 * i), qi);
        s = _mm256_add_epi32(s, qi);
    }
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    *qsum += _mm_cvtsi128_si32(t);
    return amax;
}

}  // namespace qk

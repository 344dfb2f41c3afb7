// The float work of a decode step around the matmuls (quant_core/decode/lean.py), one call each
// instead of several PyTorch operations: RMSNorm, rotary + KV-cache write, SwiGLU, and
// single-token attention over the cache. float32 throughout; arithmetic in transformers' order
// where it is cheap to follow (rotary, norm), so results differ from it only by summation order.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "simd.h"

using namespace qk;

namespace {

// out = w * (x * (1 / sqrt(mean(x^2) + eps))) over n values (transformers' RMSNorm order).
inline void rms_row(const float* x, int n, const float* w, float eps, float* out) {
    vf acc = vzero();
    int i = 0;
    for (; i + R <= n; i += R) acc = vfma(vload(x + i), vload(x + i), acc);
    float ss = vhsum(acc);
    for (; i < n; ++i) ss += x[i] * x[i];
    const float r = 1.0f / std::sqrt(ss / (float)n + eps);
    for (int k = 0; k < n; ++k) out[k] = w[k] * (x[k] * r);
}

// transformers' rotate-half rotary on the first rd of d dims: x * cos + rotate_half(x) * sin.
inline void rotate(const float* x, int d, int rd, const float* c, const float* s, float* out) {
    const int half = rd / 2;
    for (int i = 0; i < half; ++i) out[i] = x[i] * c[i] + -x[i + half] * s[i];
    for (int i = half; i < rd; ++i) out[i] = x[i] * c[i] + x[i - half] * s[i];
    for (int i = rd; i < d; ++i) out[i] = x[i];
}

}  // namespace

extern "C" {

// out[M, H] = RMSNorm(x[M, H]) with weight w.
void qrms_norm(const float* x, int M, int H, const float* w, float eps, float* out) {
    for (int m = 0; m < M; ++m) rms_row(x + (int64_t)m * H, H, w, eps, out + (int64_t)m * H);
}

// qkv: [B * T, (heads + 2 * kv_heads) * D] rows of token (b, t); cos/sin: [B * T, rd].
// Writes rotated q to q_out [B, heads, T, D], rotated k and plain v into the layer's caches
// kc/vc [B, kv_heads, maxlen, D] at positions slot .. slot + T - 1. qn/kn: per-head RMSNorm
// weights [D] applied before rotary (Qwen3), or null.
void qrope_cache(const float* qkv, int B, int T, int heads, int kv_heads, int D, int rd, const float* cos,
                 const float* sin, const float* qn, const float* kn, float eps, float* q_out, float* kc, float* vc,
                 int maxlen, int slot) {
    std::vector<float> tmp(D);
    const int64_t row_len = (int64_t)(heads + 2 * kv_heads) * D;
    for (int b = 0; b < B; ++b)
        for (int t = 0; t < T; ++t) {
            const int64_t m = (int64_t)b * T + t;
            const float* row = qkv + m * row_len;
            const float *c = cos + m * rd, *s = sin + m * rd;
            for (int h = 0; h < heads; ++h) {
                const float* src = row + (int64_t)h * D;
                if (qn) rms_row(src, D, qn, eps, tmp.data()), src = tmp.data();
                rotate(src, D, rd, c, s, q_out + (((int64_t)b * heads + h) * T + t) * D);
            }
            for (int h = 0; h < kv_heads; ++h) {
                const int64_t at = (((int64_t)b * kv_heads + h) * maxlen + slot + t) * D;
                const float* src = row + (int64_t)(heads + h) * D;
                if (kn) rms_row(src, D, kn, eps, tmp.data()), src = tmp.data();
                rotate(src, D, rd, c, s, kc + at);
                std::memcpy(vc + at, row + (int64_t)(heads + kv_heads + h) * D, D * sizeof(float));
            }
        }
}

// out[M, I] = silu(gu[:, :I]) * gu[:, I:], silu(g) = g / (1 + e^-g).
void qswiglu(const float* gu, int M, int I, float* out) {
    for (int m = 0; m < M; ++m) {
        const float* g = gu + (int64_t)m * 2 * I;
        const float* u = g + I;
        float* o = out + (int64_t)m * I;
        int i = 0;
        for (; i + R <= I; i += R) {
            const vf gv = vload(g + i);
            const vf sig = vdiv(gv, vadd(vset1(1.0f), vexp(vmul(gv, vset1(-1.0f)))));
            vstore(o + i, vmul(sig, vload(u + i)));
        }
        for (; i < I; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
}

}  // extern "C"

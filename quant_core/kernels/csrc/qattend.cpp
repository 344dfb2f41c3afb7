// Attention of one new token per batch row over the KV cache (the decode step's only attention):
// out[b, h] = softmax(scale * q[b, h] . K[b, g]^T over valid positions) . V[b, g], g = h / (heads / kv_heads).
// One (row, head) pair per OpenMP iteration; PyTorch's SDPA spent ~50 us per call on these shapes.
#include <omp.h>

#include <cmath>
#include <vector>

#include "simd.h"

using namespace qk;

namespace {

inline float dot(const float* a, const float* b, int d) {
    vf acc = vzero();
    int i = 0;
    for (; i + R <= d; i += R) acc = vfma(vload(a + i), vload(b + i), acc);
    float s = vhsum(acc);
    for (; i < d; ++i) s += a[i] * b[i];
    return s;
}

// p[j] = exp(p[j] - max) over n scores (-inf stays 0); returns the sum.
inline float softmax_numerators(float* p, int n) {
    float mx = -INFINITY;
    for (int j = 0; j < n; ++j) mx = std::max(mx, p[j]);
    float sum = 0.0f;
    int j = 0;
    for (; j + R <= n; j += R) {
        const vf e = vexp(vadd(vload(p + j), vset1(-mx)));
        vstore(p + j, e);
        sum += vhsum(e);
    }
    for (; j < n; ++j) sum += (p[j] = std::exp(p[j] - mx));
    return sum;
}

}  // namespace

extern "C" {

// q: [B, heads, D]; kc/vc: [B, kv_heads, maxlen, D] (the layer's cache); positions [0, n) are read;
// valid: [B, maxlen] bytes (0 = masked: padding) or null; out: [B, heads * D].
void qattend(const float* q, const float* kc, const float* vc, int B, int heads, int kv_heads, int D, int maxlen,
             int n, const uint8_t* valid, float scale, float* out, int nthreads) {
    const int group = heads / kv_heads;
#pragma omp parallel num_threads(nthreads)
    {
        std::vector<float> p(n);
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * heads; ++bh) {
            const int b = bh / heads, h = bh % heads;
            const float* qv = q + (int64_t)bh * D;
            const int64_t base = ((int64_t)b * kv_heads + h / group) * maxlen * D;
            const uint8_t* ok = valid ? valid + (int64_t)b * maxlen : nullptr;
            for (int j = 0; j < n; ++j)
                p[j] = (ok && !ok[j]) ? -INFINITY : dot(qv, kc + base + (int64_t)j * D, D) * scale;
            float sum = softmax_numerators(p.data(), n);
            if (ok)  // vexp flushes at e^-87, not to 0: masked positions must weigh exactly nothing
                for (int j = 0; j < n; ++j)
                    if (!ok[j]) sum -= p[j], p[j] = 0.0f;
            const float inv = 1.0f / sum;
            float* o = out + (int64_t)bh * D;
            for (int i = 0; i < D; ++i) o[i] = 0.0f;
            for (int j = 0; j < n; ++j) {
                if (p[j] == 0.0f) continue;
                const float* vr = vc + base + (int64_t)j * D;
                const float w = p[j] * inv;
                int i = 0;
                for (; i + R <= D; i += R) vstore(o + i, vfma(vset1(w), vload(vr + i), vload(o + i)));
                for (; i < D; ++i) o[i] += w * vr[i];
            }
        }
    }
}

// Attention of a prompt's T tokens per batch row, each over the positions up to its own (causal),
// the prompt written at cache positions [0, T): q: [B, heads, T, D] (qrope_cache's q_out); valid:
// [B, maxlen] bytes (0 = padding; a position always sees itself, as the lean prefill's mask) or
// null; out: [B * T, heads * D], row b * T + t. One (row, head, token) per OpenMP iteration.
void qattend_prompt(const float* q, const float* kc, const float* vc, int B, int heads, int kv_heads, int D,
                    int maxlen, int T, const uint8_t* valid, float scale, float* out, int nthreads) {
    const int group = heads / kv_heads;
#pragma omp parallel num_threads(nthreads)
    {
        std::vector<float> p(T);
#pragma omp for schedule(dynamic, 4)
        for (int bht = 0; bht < B * heads * T; ++bht) {
            const int t = bht % T, bh = bht / T, b = bh / heads, h = bh % heads, n = t + 1;
            const float* qv = q + (int64_t)bht * D;
            const int64_t base = ((int64_t)b * kv_heads + h / group) * maxlen * D;
            const uint8_t* ok = valid ? valid + (int64_t)b * maxlen : nullptr;
            for (int j = 0; j < n; ++j)
                p[j] = (ok && !ok[j] && j != t) ? -INFINITY : dot(qv, kc + base + (int64_t)j * D, D) * scale;
            float sum = softmax_numerators(p.data(), n);
            if (ok)  // vexp flushes at e^-87, not to 0: masked positions must weigh exactly nothing
                for (int j = 0; j < t; ++j)
                    if (!ok[j]) sum -= p[j], p[j] = 0.0f;
            const float inv = 1.0f / sum;
            float* o = out + ((int64_t)(b * T + t) * heads + h) * D;
            for (int i = 0; i < D; ++i) o[i] = 0.0f;
            for (int j = 0; j < n; ++j) {
                if (p[j] == 0.0f) continue;
                const float* vr = vc + base + (int64_t)j * D;
                const float w = p[j] * inv;
                int i = 0;
                for (; i + R <= D; i += R) vstore(o + i, vfma(vset1(w), vload(vr + i), vload(o + i)));
                for (; i < D; ++i) o[i] += w * vr[i];
            }
        }
    }
}

}  // extern "C"

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

// One query over nv visible cache positions of the K/V rows at base, pos(i) the i-th in order:
// o = softmax(scale * q . K^T) . V. Masked positions never enter the sums, so a row gets the same
// bits whatever padding precedes it (a left-padded batch row as the prompt alone): with the int8
// prompt path a last-bit difference can flip an activation's rounding, and greedy text with it.
// pos is a template argument so that the unmasked decode step reads positions 0..n-1 directly: through
// an index array (cb9bf50) its attention ran 3-7 % slower than before it (SmolLM2, 192 positions, 30 layers,
// one thread: 0.661 against 0.633 ms, fastest of 200); read directly, 0.636 against 0.639.
template <class Pos>
inline void attend_at(const float* qv, const float* kc, const float* vc, int64_t base, int D, Pos pos, int nv,
                      float scale, float* p, float* o) {
    for (int i = 0; i < nv; ++i) p[i] = dot(qv, kc + base + (int64_t)pos(i) * D, D) * scale;
    const float inv = 1.0f / softmax_numerators(p, nv);
    for (int i = 0; i < D; ++i) o[i] = 0.0f;
    for (int i = 0; i < nv; ++i) {
        if (p[i] == 0.0f) continue;
        const float* vr = vc + base + (int64_t)pos(i) * D;
        const float w = p[i] * inv;
        int k = 0;
        for (; k + R <= D; k += R) vstore(o + k, vfma(vset1(w), vload(vr + k), vload(o + k)));
        for (; k < D; ++k) o[k] += w * vr[k];
    }
}

// The visible positions listed: at[0..nv).
inline void attend_one(const float* qv, const float* kc, const float* vc, int64_t base, int D, const int* at, int nv,
                       float scale, float* p, float* o) {
    attend_at(qv, kc, vc, base, D, [at](int i) { return at[i]; }, nv, scale, p, o);
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
        std::vector<int> at(n);
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * heads; ++bh) {
            const int b = bh / heads, h = bh % heads;
            const int64_t base = ((int64_t)b * kv_heads + h / group) * maxlen * D;
            const float* qv = q + (int64_t)bh * D;
            float* o = out + (int64_t)bh * D;
            if (!valid) {  // every position visible: read them in order, no index
                attend_at(qv, kc, vc, base, D, [](int j) { return j; }, n, scale, p.data(), o);
                continue;
            }
            const uint8_t* ok = valid + (int64_t)b * maxlen;
            int nv = 0;
            for (int j = 0; j < n; ++j)
                if (ok[j]) at[nv++] = j;
            attend_one(qv, kc, vc, base, D, at.data(), nv, scale, p.data(), o);
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
        std::vector<int> at(T);
#pragma omp for schedule(dynamic, 4)
        for (int bht = 0; bht < B * heads * T; ++bht) {
            const int t = bht % T, bh = bht / T, b = bh / heads, h = bh % heads;
            const uint8_t* ok = valid ? valid + (int64_t)b * maxlen : nullptr;
            int nv = 0;
            for (int j = 0; j <= t; ++j)
                if (!ok || ok[j] || j == t) at[nv++] = j;
            attend_one(q + (int64_t)bht * D, kc, vc, ((int64_t)b * kv_heads + h / group) * maxlen * D, D, at.data(),
                       nv, scale, p.data(), out + ((int64_t)(b * T + t) * heads + h) * D);
        }
    }
}

}  // extern "C"

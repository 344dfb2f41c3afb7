// The decoder layers of one decode step in a single call (quant_core/decode/lean_plan.py builds
// the plan once): per layer RMSNorm, fused q/k/v, rotary + cache write, attention, o (added into
// the residual), RMSNorm, fused gate/up, SwiGLU, down (added into the residual). Python keeps
// only the embedding, rotary tables and output head; ~9 calls per layer from Python cost more
// than the float work they wrapped on small models. qprefill does the same for a prompt's tokens
// (causal attention, the projections' prompt path): SmolLM2's 15-token prefill made ~270 calls.
#include <time.h>

#include <cstdint>

extern "C" {
void qgemv_f32(const float* x, int M, const uint8_t* const* segs, const int* ends, int nseg, int kind, int N,
               int Kp, int G, int wpg, const float* sc, const float* of, const float* lut, const float* bias,
               float* y, int64_t ldy, int accumulate, int nthreads);
void qgemv_i8(const float* x, int M, const uint8_t* const* segs, const int* ends, int nseg, int kind, int N,
              int Kp, int G, int wpg, const float* sc, const float* of, const float* bias, float* y, int64_t ldy,
              int accumulate, int nthreads);
void qgemv_i16(const float* x, int M, const uint8_t* const* segs, const int* ends, int nseg, int kind, int N,
               int Kp, int G, int wpg, const float* sc, const float* of, const float* lut, const float* bias, float* y,
               int64_t ldy, int accumulate, int nthreads);
void qgemv_q8(const float* x, int M, const uint8_t* const* segs, const int* ends, int nseg, int kind, int N, int Kp,
              int G, int wpg, const float* sc, const float* of, const float* bias, float* y, int64_t ldy,
              int accumulate, int nthreads);
int qgemm_q8(const void* x, int M, int64_t ldx, const uint8_t* const* segs, const int* ends, int nseg, int kind,
             int N, int Kp, int G, int wpg, const float* sc, const float* of, const float* bias, void* y,
             int64_t ldy, int accumulate, int x_bf16, int y_bf16, int max_block, int nthreads);
void qrms_norm(const float* x, int M, int H, const float* w, float eps, float* out);
void qrope_cache(const float* qkv, int B, int T, int heads, int kv_heads, int D, int rd, const float* cos,
                 const float* sin, const float* qn, const float* kn, float eps, float* q_out, float* kc, float* vc,
                 int maxlen, int slot);
void qswiglu(const float* gu, int M, int I, float* out);
void qattend(const float* q, const float* kc, const float* vc, int B, int heads, int kv_heads, int D, int maxlen,
             int n, const uint8_t* valid, float scale, float* out, int nthreads);
void qattend_prompt(const float* q, const float* kc, const float* vc, int B, int heads, int kv_heads, int D,
                    int maxlen, int T, const uint8_t* valid, float scale, float* out, int nthreads);
}

namespace {

struct Proj {  // one fused projection (mirrors quant_core/decode/lean_plan.py: CProj)
    const uint8_t* const* segs;
    const int* ends;
    int nseg, kind, N, Kp, G, wpg;
    const float *sc, *of, *lut, *bias;
    int path;    // 0: float FMA, 1: int8 activations, 2: int16 activations (cpu_simd.py: PATHS)
    int prompt;        // prompt rows: int8 activations per block, 1 fused (qgemv8.cpp), 2 GEMM (qgemm8.cpp), 0 as path
    int prompt_block;  // the GEMM's most columns per activation scale

    void run(const float* x, int M, float* y, int accumulate, int nthreads, bool prompt_rows = false) const {
        if (prompt_rows && prompt == 2)
            qgemm_q8(x, M, Kp, segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, bias, y, N, accumulate, 0, 0,
                     prompt_block, nthreads);
        else if (prompt_rows && prompt == 1)
            qgemv_q8(x, M, segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, bias, y, N, accumulate, nthreads);
        else if (path == 1)
            qgemv_i8(x, M, segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, bias, y, N, accumulate, nthreads);
        else if (path == 2)
            qgemv_i16(x, M, segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, lut, bias, y, N, accumulate, nthreads);
        else qgemv_f32(x, M, segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, lut, bias, y, N, accumulate, nthreads);
    }
};

struct LayerPlan {
    Proj qkv, o, gate_up, down;
    const float *norm1, *norm2, *q_norm, *k_norm;  // q_norm / k_norm: per-head weights (Qwen3) or null
    float eps1, eps2, qk_eps;
    float *k_cache, *v_cache;  // [B, kv_heads, maxlen, D]
};

struct StepPlan {
    int B, heads, kv_heads, D, rd, H, I, maxlen, nthreads;
    float scale;
    float *h, *qkv, *q, *att, *gu, *act;  // scratch: [B, H], [B, qkv.N], [B, heads * D] x2, [B, 2I], [B, I]
};

// Seconds spent per kind of work, when the caller asks (benchmarks' per-token split).
struct Clock {
    double* acc;  // [matmuls, attention, everything else] or null
    double last = 0;

    static double now() {
        timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + 1e-9 * ts.tv_nsec;
    }
    explicit Clock(double* a) : acc(a) { if (acc) last = now(); }
    void lap(int kind) {
        if (!acc) return;
        const double t = now();
        acc[kind] += t - last;
        last = t;
    }
};
enum { MATMUL = 0, ATTENTION = 1, OTHER = 2 };

}  // namespace

extern "C" {

// x: [B, H] hidden states of the new tokens (updated in place); cos/sin: [B, rd]; the tokens go to
// cache position `slot`; valid: [B, maxlen] bytes (0 = padding) or null; seconds: null, or
// [matmuls, attention, other] to add this call's wall time to.
void qstep(const StepPlan* p, const LayerPlan* layers, int nlayers, float* x, const float* cos, const float* sin,
           int slot, const uint8_t* valid, double* seconds) {
    const int B = p->B;
    Clock clock(seconds);
    for (int l = 0; l < nlayers; ++l) {
        const LayerPlan& L = layers[l];
        qrms_norm(x, B, p->H, L.norm1, L.eps1, p->h);
        clock.lap(OTHER);
        L.qkv.run(p->h, B, p->qkv, 0, p->nthreads);
        clock.lap(MATMUL);
        qrope_cache(p->qkv, B, 1, p->heads, p->kv_heads, p->D, p->rd, cos, sin, L.q_norm, L.k_norm, L.qk_eps, p->q,
                    L.k_cache, L.v_cache, p->maxlen, slot);
        clock.lap(OTHER);
        qattend(p->q, L.k_cache, L.v_cache, B, p->heads, p->kv_heads, p->D, p->maxlen, slot + 1, valid, p->scale,
                p->att, p->nthreads);
        clock.lap(ATTENTION);
        L.o.run(p->att, B, x, 1, p->nthreads);
        clock.lap(MATMUL);
        qrms_norm(x, B, p->H, L.norm2, L.eps2, p->h);
        clock.lap(OTHER);
        L.gate_up.run(p->h, B, p->gu, 0, p->nthreads);
        clock.lap(MATMUL);
        qswiglu(p->gu, B, p->I, p->act);
        clock.lap(OTHER);
        L.down.run(p->act, B, x, 1, p->nthreads);
        clock.lap(MATMUL);
    }
}

// A prompt of T tokens per batch row through every layer (the lean prefill): x [B * T, H], cos/sin
// [B * T, rd], written at cache positions [0, T); valid: [B, maxlen] bytes or null. The plan's
// scratch buffers hold B * T rows; projections take their prompt path; attention is causal.
void qprefill(const StepPlan* p, const LayerPlan* layers, int nlayers, float* x, const float* cos, const float* sin,
              int T, const uint8_t* valid, double* seconds) {
    const int B = p->B, BT = B * T;
    Clock clock(seconds);
    for (int l = 0; l < nlayers; ++l) {
        const LayerPlan& L = layers[l];
        qrms_norm(x, BT, p->H, L.norm1, L.eps1, p->h);
        clock.lap(OTHER);
        L.qkv.run(p->h, BT, p->qkv, 0, p->nthreads, true);
        clock.lap(MATMUL);
        qrope_cache(p->qkv, B, T, p->heads, p->kv_heads, p->D, p->rd, cos, sin, L.q_norm, L.k_norm, L.qk_eps, p->q,
                    L.k_cache, L.v_cache, p->maxlen, 0);
        clock.lap(OTHER);
        qattend_prompt(p->q, L.k_cache, L.v_cache, B, p->heads, p->kv_heads, p->D, p->maxlen, T, valid, p->scale,
                       p->att, p->nthreads);
        clock.lap(ATTENTION);
        L.o.run(p->att, BT, x, 1, p->nthreads, true);
        clock.lap(MATMUL);
        qrms_norm(x, BT, p->H, L.norm2, L.eps2, p->h);
        clock.lap(OTHER);
        L.gate_up.run(p->h, BT, p->gu, 0, p->nthreads, true);
        clock.lap(MATMUL);
        qswiglu(p->gu, BT, p->I, p->act);
        clock.lap(OTHER);
        L.down.run(p->act, BT, x, 1, p->nthreads, true);
        clock.lap(MATMUL);
    }
}

}  // extern "C"

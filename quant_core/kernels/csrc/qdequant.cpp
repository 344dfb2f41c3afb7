// Dequantization for large batches (the caller runs a float GEMM on the result) and for
// embedding rows of a quantized table. Same layer layout as the GEMV (layer.h).
#include <omp.h>

#include <cstring>

#include "layer.h"

using namespace qk;

namespace {

const float kZeroLut[16] = {0};

// R floats -> R bf16 bit patterns, round to nearest even (bit-identical to torch's cast of finite values).
inline void store_bf16(uint16_t* dst, vf v) {
    alignas(64) float tmp[R];
    vstore(tmp, v);
    for (int r = 0; r < R; ++r) {
        uint32_t b;
        std::memcpy(&b, tmp + r, 4);
        dst[r] = (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
    }
}

inline void store(float* dst, vf v) { vstore(dst, v); }
inline void store(uint16_t* dst, vf v) { store_bf16(dst, v); }

// Tiles [t0, t1) written transposed: out[k * ld + (t - t0) * R + r] = w[t * R + r, k].
// (A column-major slab: the GEMM reads it as the transposed weight, no copy.)
template <int KIND, typename OUT>
void dequant_t(const Layer& L, int t0, int t1, OUT* out, int64_t ld, int nthreads) {
    constexpr int CPW = cols_per_word<KIND>();
    const Lut lut = make_lut(L.lut ? L.lut : kZeroLut);
    const int nw = L.words();
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int t = t0; t < t1; ++t) {
        const uint8_t* rows[R];
        L.tile_rows(t, rows);
        OUT* col = out + (int64_t)(t - t0) * R;
        for (int c0 = 0; c0 < nw; c0 += R) {
            const int valid = std::min(R, nw - c0);
            vi cv[R];
            load_tile(rows, 4 * (int64_t)c0, valid, cv);
            Unroll<0, R>::run([&](auto jc) QK_INLINE {
                constexpr int j = decltype(jc)::value;
                if (j >= valid) return;
                const int c = c0 + j, g = c / L.wpg;
                const vf s = vload(L.scales(t, g)), o = vload(L.offsets(t, g));
                Unroll<0, CPW>::run([&](auto ic) QK_INLINE {
                    constexpr int i = decltype(ic)::value;
                    store(col + ((int64_t)c * CPW + i) * ld, vfma(decode_plain<KIND, i>(cv[j], lut), s, o));
                });
            });
        }
    }
}

template <typename OUT>
void dequant_any(const Layer& L, int t0, int t1, OUT* out, int64_t ld, int nthreads) {
    if (L.kind == NIB_INT) dequant_t<NIB_INT>(L, t0, t1, out, ld, nthreads);
    else if (L.kind == NIB_LUT) dequant_t<NIB_LUT>(L, t0, t1, out, ld, nthreads);
    else dequant_t<BYTES>(L, t0, t1, out, ld, nthreads);
}

}  // namespace

extern "C" {

// Rows of tiles [t0, t1) as a float32 [Kp, ld] slab (ld >= (t1 - t0) * R).
void qdequant_t(const uint8_t* const* segs, const int* ends, int nseg, int kind, int N, int Kp, int G, int wpg,
                const float* sc, const float* of, const float* lut, int t0, int t1, float* out, int64_t ld,
                int nthreads) {
    dequant_any(Layer{segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, lut}, t0, t1, out, ld, nthreads);
}

// The same slab as bf16 (for a bf16 GEMM on CPUs with bf16 units).
void qdequant_t_bf16(const uint8_t* const* segs, const int* ends, int nseg, int kind, int N, int Kp, int G,
                     int wpg, const float* sc, const float* of, const float* lut, int t0, int t1, uint16_t* out,
                     int64_t ld, int nthreads) {
    dequant_any(Layer{segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, lut}, t0, t1, out, ld, nthreads);
}

// Rows ids[0..n) of the weight, float32 [n, Kp] (embedding lookups in a quantized table).
void qgather(const uint8_t* const* segs, const int* ends, int nseg, int kind, int N, int Kp, int G, int wpg,
             const float* sc, const float* of, const float* lut, const int64_t* ids, int n, float* out) {
    const Layer L{segs, ends, nseg, kind, N, Kp, G, wpg, sc, of, lut};
    const int cpw = kind == BYTES ? 4 : 8, bits = kind == BYTES ? 8 : 4;
    for (int i = 0; i < n; ++i) {
        const int64_t id = ids[i];
        const int t = (int)(id / R), r = (int)(id % R);
        const uint8_t* row = L.row((int)id);
        float* dst = out + (int64_t)i * Kp;
        for (int c = 0; c < L.words(); ++c) {
            uint32_t word;
            std::memcpy(&word, row + 4 * c, 4);
            const float s = L.scales(t, c / wpg)[r], o = L.offsets(t, c / wpg)[r];
            for (int k = 0; k < cpw; ++k) {
                const uint32_t code = (word >> (bits * k)) & ((1u << bits) - 1);
                dst[c * cpw + k] = (kind == NIB_LUT ? lut[code] : (float)code) * s + o;
            }
        }
    }
}

// Rows per tile of this build (the layout of scales and offsets depends on it).
int qtile_rows() { return R; }

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

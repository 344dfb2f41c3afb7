// One quantized layer as the C++ kernels see it (built by kernels/cpu_repack.py, once at load).
//
// Weight bytes: the checkpoint's own rows, [N, Kp / 2] for codes of <= 4 bits (byte j holds
// column 2j in its low nibble and 2j + 1 in its high nibble, so a little-endian 32-bit word
// holds 8 consecutive columns, nibble i = column i) or [N, Kp] for int8 (a word holds 4
// columns, byte i = column i). Kp is K padded to a multiple of 32.
// Scales and offsets: float32 [ceil(N / R), G, R], i.e. per tile of R rows, per group, one
// vector of R rows (R = lanes of the ISA, simd.h). Group g covers words [g * wpg, (g+1) * wpg).
// Dequantized weight: w = val(code) * scale + off, val(code) = code for int formats (the zero
// point is folded into off) or lut[code] for codebook formats (off = 0).
// Rows may come from several tensors ("segments", e.g. q, k and v read as one fused projection
// without copying them together): segment s holds rows [ends[s-1], ends[s]) at segs[s].
#pragma once
#include <algorithm>
#include <cstdint>

#include "simd.h"

namespace qk {

enum Kind : int { NIB_INT = 0, NIB_LUT = 1, BYTES = 2 };

template <int KIND>
constexpr int cols_per_word() { return KIND == BYTES ? 4 : 8; }

struct Layer {
    const uint8_t* const* segs;
    const int* ends;
    int nseg, kind, N, Kp, G, wpg;
    const float* sc;
    const float* of;
    const float* lut;  // 16 floats (NIB_LUT) or null

    int words() const { return kind == BYTES ? Kp / 4 : Kp / 8; }
    int64_t row_bytes() const { return 4 * (int64_t)words(); }
    int tiles() const { return (N + R - 1) / R; }
    const uint8_t* row(int n) const {
        int s = 0, start = 0;
        while (n >= ends[s]) start = ends[s++];
        return segs[s] + (int64_t)(n - start) * row_bytes();
    }
    // Rows of tile t; past the last row, the last row again (read, never stored).
    void tile_rows(int t, const uint8_t** rows) const {
        for (int r = 0; r < R; ++r) rows[r] = row(std::min(t * R + r, N - 1));
    }
    const float* scales(int t, int g) const { return sc + ((int64_t)t * G + g) * R; }
    const float* offsets(int t, int g) const { return of + ((int64_t)t * G + g) * R; }
};

// Value of column i of every lane's word, as stored (no power-of-two prescaling).
template <int KIND, int I>
inline vf decode_plain(vi v, const Lut& lut) {
    if constexpr (KIND == NIB_LUT) return lut_nibble<I>(v, lut);
    else if constexpr (KIND == NIB_INT) return vcvt(vand(vsrli<4 * I>(v), vset1i(0xF)));
    else return vcvt(vand(vsrli<8 * I>(v), vset1i(0xFF)));
}

}  // namespace qk

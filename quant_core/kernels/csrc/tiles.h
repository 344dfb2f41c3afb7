// What the small-batch kernels share: where a tile's results go and the loop over tiles.
#pragma once
#include <omp.h>

#include <cstring>
#include <type_traits>

#include "layer.h"

namespace qk {

// What happens to a tile's results: + bias (padded to whole tiles), + what out already holds.
struct Epilogue {
    const float* bias;
    bool accumulate;

    inline void store(float* out, int t, vf v) const {
        if (bias) v = vadd(v, vload(bias + (int64_t)t * R));
        if (accumulate) v = vadd(v, vload(out));
        vstore(out, v);
    }
};

// Calls tile(t, mt, m0, out, ldo) for every tile t and block of up to MB rows m0.., writing y[m * ldy + n].
template <int MB = 4, class F>
void for_tiles(const Layer& L, int M, float* y, int64_t ldy, bool accumulate, int nthreads, F&& tile) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int t = 0; t < L.tiles(); ++t) {
        alignas(64) float buf[MB * R];
        const int rows = std::min(R, L.N - t * R);
        for (int m0 = 0; m0 < M; m0 += MB) {
            const int mt = std::min(MB, M - m0);
            float* dst = y + (int64_t)m0 * ldy + (int64_t)t * R;
            if (rows == R) {
                tile(t, mt, m0, dst, ldy);
            } else {  // partial last tile: through a buffer
                if (accumulate)
                    for (int m = 0; m < mt; ++m) std::memcpy(buf + m * R, dst + (int64_t)m * ldy, rows * sizeof(float));
                tile(t, mt, m0, buf, (int64_t)R);
                for (int m = 0; m < mt; ++m) std::memcpy(dst + (int64_t)m * ldy, buf + m * R, rows * sizeof(float));
            }
        }
    }
}

// f(std::integral_constant<int, mt>{}) for a block of mt rows, 1 <= mt <= MAX (anything below counts as 1):
// the tile kernels take their row count as a template argument (accumulator registers per row), so
// every small-batch kernel turned for_tiles' run-time count into a call of its own instantiation.
template <int MAX, class F>
inline void with_rows(int mt, F&& f) {
    if constexpr (MAX > 1) {
        if (mt >= MAX) return f(std::integral_constant<int, MAX>{});
        return with_rows<MAX - 1>(mt, f);
    } else {
        f(std::integral_constant<int, 1>{});
    }
}

}  // namespace qk

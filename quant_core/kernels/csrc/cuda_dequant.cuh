// Codes -> tensor-core B fragments with bit tricks, no per-code arithmetic or table loads.
//
// One "unit" of the re-laid weight (cuda_layout.py) is 16 k-rows x 64 output columns; each
// lane of a warp holds the B fragments of 8 n8-subtiles (s = 0..7, column 8s + lane/4) for
// that unit. A fragment is two 32-bit registers, each two 16-bit values at k = 2t + 8r + h
// (t = lane % 4, r = register, h = half). Per subtile a thread needs one scale (and zero or
// minimum): its column is fixed, and a unit never straddles a group (groups are >= 16 rows).
//
//   int4: word j of the lane holds subtiles 2j (f=0) and 2j+1 (f=1); code of (f, r, h) at
//         nibble p = 2f + r + 4h, so `(q & 0x000f000f) | 0x64006400` is two fp16 1024 + u
//         of one register in one LOP3 (Marlin's "magic number" trick); bf16 has 7 mantissa
//         bits, so there each register is a shift + LOP3 with 128 as the magic number.
//   cb4:  (nf4, fp4) nibble p = 4f + 2r + h; four codes at once index byte tables of the
//         16 levels with PRMT (bits 0-2 pick a byte, bit 3 picks the table half).
//   int8: 8 words per lane (two 16-byte halves: subtiles 0-3, 4-7); byte p = 2r + h.
#pragma once
#include <cstring>

#include "cuda_ptx.cuh"

namespace qmm {

enum Format { INT4 = 0, CB4 = 1, INT8 = 2 };
enum ZeroMode { ZNONE = 0, ZINT = 1, ZMIN = 2 };  // symmetric / uint8 zero points / float minimums

template <typename T2>
__device__ __forceinline__ T2 from_bits(uint32_t u) {
  T2 v;
  memcpy(&v, &u, 4);
  return v;
}
template <typename T2>
__device__ __forceinline__ uint32_t to_bits(T2 v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  return u;
}

template <typename T>
struct Pair;
template <>
struct Pair<half> {
  using T2 = half2;
  static constexpr uint32_t MAGIC = 0x64646464u;  // fp16 0x64zz = 1024 + zz
};
template <>
struct Pair<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t MAGIC = 0x43434343u;  // bf16 0x43zz = 128 + zz (zz < 128)
};

template <typename T>
__device__ __forceinline__ typename Pair<T>::T2 add2(uint32_t a, uint32_t b) {
  using T2 = typename Pair<T>::T2;
  return __hadd2(from_bits<T2>(a), from_bits<T2>(b));
}

// (q & MASK) | MAGIC in one LOP3 (written as C, ptxas needs two: both constants are immediates).
template <uint32_t MASK, uint32_t MAGIC>
__device__ __forceinline__ uint32_t mask_or(uint32_t q) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(q), "n"(MASK), "n"(MAGIC));
  return d;
}

// Both halves = half (s & 1) of word s / 2: the value of subtile s, broadcast over a register.
__device__ __forceinline__ uint32_t dup_half(const uint32_t w[4], int s) {
  return __byte_perm(w[s >> 1], 0, (s & 1) ? 0x3232 : 0x1010);
}

template <typename T>
__device__ __forceinline__ uint32_t splat(float v) {
  if constexpr (Pair<T>::MAGIC == 0x64646464u) {
    return to_bits(__float2half2_rn(v));
  } else {
    return to_bits(__float2bfloat162_rn(v));
  }
}

// What one group row gives a lane, per subtile s (column 8s + lane/4), ready to apply: made once
// per group, not per 16-row unit. Arrays a format never reads are dropped by the compiler.
template <typename T, int FMT, int ZM>
struct GroupRegs {
  uint32_t s2[8];   // scale, both halves
  uint32_t nz[8];   // -(magic + zero point), both halves ("u + nz" is u - z)
  uint32_t nz16[8]; // fp16 int4, nibbles read at bits 4-7 (1024 + 16u, times 1/16): -(64 + z)
  uint32_t m2[8];   // minimum (ZMIN)
  float nzf[8];     // int8 with bf16 (decoded through fp32): -(2^23 + z)

  __device__ __forceinline__ void load(const T* srow, const uint8_t* zrow, int lane) {
    constexpr bool FP16 = Pair<T>::MAGIC == 0x64646464u;
    constexpr float BASE = FP16 ? 1024.f : 128.f;
    constexpr float ZSYM = FMT == INT8 ? 128.f : 8.f;
    const int col = (lane >> 2) * 8;  // this lane's 8 columns are neighbours (cuda_layout.shuffle_groups)
    const uint4 sv = *reinterpret_cast<const uint4*>(srow + col);
    const uint32_t sc[4] = {sv.x, sv.y, sv.z, sv.w};
    uint32_t zr[2] = {0u, 0u}, mn[4] = {0u, 0u, 0u, 0u};
    if constexpr (ZM == ZINT) {
      const uint2 zv = *reinterpret_cast<const uint2*>(zrow + col);
      zr[0] = zv.x, zr[1] = zv.y;
    } else if constexpr (ZM == ZMIN) {
      const uint4 mv = *reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(zrow) + col);
      mn[0] = mv.x, mn[1] = mv.y, mn[2] = mv.z, mn[3] = mv.w;
    }
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      s2[s] = dup_half(sc, s);
      if constexpr (ZM == ZMIN) m2[s] = dup_half(mn, s);
      if constexpr (ZM == ZINT) {
        const int b = s & 3;
        // magic exponent byte over the zero byte (0x64zz = 1024 + z, 0x43zz = 128 + z), sign flipped
        nz[s] = __byte_perm(zr[s >> 2], Pair<T>::MAGIC, 0x4040 | (b << 8) | b) ^ 0x80008000u;
        if constexpr (FP16 && FMT == INT4) nz16[s] = to_bits(__hadd2(from_bits<half2>(nz[s]), __float2half2_rn(960.f)));
        nzf[s] = __uint_as_float(__byte_perm(zr[s >> 2], 0xCB000000u, 0x7440 | b));  // -(2^23 + z)
      } else {
        const float z = ZM == ZNONE ? ZSYM : 0.f;
        nz[s] = splat<T>(-(BASE + z));
        if constexpr (FP16 && FMT == INT4) nz16[s] = splat<T>(-(64.f + z));
        nzf[s] = -(8388608.f + z);
      }
    }
  }

  // Only subtiles 2w and 2w + 1 (one word of the lane's codes), into slots 0 and 1: what warp w of a
  // warpgroup needs when the unit is the wgmma A operand (cuda_wgk.cuh). Same values as load().
  __device__ __forceinline__ void load_pair(const T* srow, const uint8_t* zrow, int lane, int w) {
    constexpr bool FP16 = Pair<T>::MAGIC == 0x64646464u;
    constexpr float BASE = FP16 ? 1024.f : 128.f;
    constexpr float ZSYM = FMT == INT8 ? 128.f : 8.f;
    const int col = (lane >> 2) * 8 + 2 * w;
    const uint32_t sc = *reinterpret_cast<const uint32_t*>(srow + col);
    s2[0] = __byte_perm(sc, 0, 0x1010), s2[1] = __byte_perm(sc, 0, 0x3232);
    if constexpr (ZM == ZMIN) {
      const uint32_t mn = *reinterpret_cast<const uint32_t*>(reinterpret_cast<const T*>(zrow) + col);
      m2[0] = __byte_perm(mn, 0, 0x1010), m2[1] = __byte_perm(mn, 0, 0x3232);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if constexpr (ZM == ZINT) {
        const uint32_t zr = *reinterpret_cast<const uint16_t*>(zrow + col);
        nz[i] = __byte_perm(zr, Pair<T>::MAGIC, 0x4040 | (i << 8) | i) ^ 0x80008000u;
        if constexpr (FP16 && FMT == INT4) nz16[i] = to_bits(__hadd2(from_bits<half2>(nz[i]), __float2half2_rn(960.f)));
      } else {
        const float z = ZM == ZNONE ? ZSYM : 0.f;
        nz[i] = splat<T>(-(BASE + z));
        if constexpr (FP16 && FMT == INT4) nz16[i] = splat<T>(-(64.f + z));
      }
    }
  }
};

// Scale (and minimum) applied to a fragment register holding u - z.
template <typename T, int ZM>
__device__ __forceinline__ uint32_t scale_reg(uint32_t v, uint32_t s2, uint32_t m2) {
  using T2 = typename Pair<T>::T2;
  if constexpr (ZM == ZMIN) {
    return to_bits(__hfma2(from_bits<T2>(v), from_bits<T2>(s2), from_bits<T2>(m2)));
  } else {
    return to_bits(__hmul2(from_bits<T2>(v), from_bits<T2>(s2)));
  }
}

// ---- int4 -------------------------------------------------------------------------------
// One word of a lane's codes: subtiles s0 (group slot i0) and s0 + 1 (slot i0 + 1), as
// v = {(s0, r0), (s0, r1), (s0 + 1, r0), (s0 + 1, r1)}, scaled.
template <typename T, int ZM>
__device__ __forceinline__ void int4_word(uint32_t q, const GroupRegs<T, INT4, ZM>& gp, int i0, uint32_t v[4]) {
  const int i1 = i0 + 1;
  if constexpr (Pair<T>::MAGIC == 0x64646464u) {
    const half2 k16 = __float2half2_rn(0.0625f);  // 1024 + 16u times 1/16 is 64 + u
    const uint32_t q8 = q >> 8;
    v[0] = to_bits(add2<T>(mask_or<0x000f000fu, 0x64006400u>(q), gp.nz[i0]));
    v[1] = to_bits(__hfma2(from_bits<half2>(mask_or<0x00f000f0u, 0x64006400u>(q)), k16, from_bits<half2>(gp.nz16[i0])));
    v[2] = to_bits(add2<T>(mask_or<0x000f000fu, 0x64006400u>(q8), gp.nz[i1]));
    v[3] = to_bits(__hfma2(from_bits<half2>(mask_or<0x00f000f0u, 0x64006400u>(q8)), k16, from_bits<half2>(gp.nz16[i1])));
  } else {
    v[0] = to_bits(add2<T>(mask_or<0x000f000fu, 0x43004300u>(q), gp.nz[i0]));
    v[1] = to_bits(add2<T>(mask_or<0x000f000fu, 0x43004300u>(q >> 4), gp.nz[i0]));
    v[2] = to_bits(add2<T>(mask_or<0x000f000fu, 0x43004300u>(q >> 8), gp.nz[i1]));
    v[3] = to_bits(add2<T>(mask_or<0x000f000fu, 0x43004300u>(q >> 12), gp.nz[i1]));
  }
  v[0] = scale_reg<T, ZM>(v[0], gp.s2[i0], gp.m2[i0]);
  v[1] = scale_reg<T, ZM>(v[1], gp.s2[i0], gp.m2[i0]);
  v[2] = scale_reg<T, ZM>(v[2], gp.s2[i1], gp.m2[i1]);
  v[3] = scale_reg<T, ZM>(v[3], gp.s2[i1], gp.m2[i1]);
}

template <typename T, int ZM>
__device__ __forceinline__ void dequant_int4(const uint32_t q[4], const GroupRegs<T, INT4, ZM>& gp, uint32_t b[8][2]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint32_t v[4];
    int4_word<T, ZM>(q[j], gp, 2 * j, v);
    b[2 * j][0] = v[0], b[2 * j][1] = v[1], b[2 * j + 1][0] = v[2], b[2 * j + 1][1] = v[3];
  }
}

// ---- 4-bit codebooks (nf4, fp4) -------------------------------------------------------------
// lut[0..3]: low bytes of levels 0-3, 4-7, 8-11, 12-15; lut[4..7]: their high bytes.
__device__ __forceinline__ void lookup4(uint32_t x, const uint32_t lut[8], uint32_t& r0, uint32_t& r1) {
  const uint32_t sel = x & 0x7777u;                               // byte index of each code in a half table
  const uint32_t half = mask_or<0x4444u, 0x3210u>(x >> 1);        // byte i from table a (code < 8) or b
  const uint32_t lo = __byte_perm(__byte_perm(lut[0], lut[1], sel), __byte_perm(lut[2], lut[3], sel), half);
  const uint32_t hi = __byte_perm(__byte_perm(lut[4], lut[5], sel), __byte_perm(lut[6], lut[7], sel), half);
  r0 = __byte_perm(lo, hi, 0x5140);  // level of code 0 | level of code 1
  r1 = __byte_perm(lo, hi, 0x7362);
}

// One word of a lane's codes (subtiles s0 = slot i0 and s0 + 1), in int4_word's order.
template <typename T>
__device__ __forceinline__ void cb4_word(uint32_t q, const GroupRegs<T, CB4, ZNONE>& gp, const uint32_t lut[8], int i0,
                                         uint32_t v[4]) {
  lookup4(q, lut, v[0], v[1]);
  lookup4(q >> 16, lut, v[2], v[3]);
  v[0] = scale_reg<T, ZNONE>(v[0], gp.s2[i0], 0);
  v[1] = scale_reg<T, ZNONE>(v[1], gp.s2[i0], 0);
  v[2] = scale_reg<T, ZNONE>(v[2], gp.s2[i0 + 1], 0);
  v[3] = scale_reg<T, ZNONE>(v[3], gp.s2[i0 + 1], 0);
}

template <typename T>
__device__ __forceinline__ void dequant_cb4(const uint32_t q[4], const GroupRegs<T, CB4, ZNONE>& gp,
                                            const uint32_t lut[8], uint32_t b[8][2]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint32_t v[4];
    cb4_word<T>(q[j], gp, lut, 2 * j, v);
    b[2 * j][0] = v[0], b[2 * j][1] = v[1], b[2 * j + 1][0] = v[2], b[2 * j + 1][1] = v[3];
  }
}

// ---- int8 -------------------------------------------------------------------------------------
template <typename T, int ZM>
__device__ __forceinline__ void dequant_int8(const uint32_t q[8], const GroupRegs<T, INT8, ZM>& gp, uint32_t b[8][2]) {
#pragma unroll
  for (int s = 0; s < 8; ++s) {
    uint32_t v0, v1;
    if constexpr (Pair<T>::MAGIC == 0x64646464u) {
      v0 = to_bits(add2<T>(__byte_perm(q[s], 0x64646464u, 0x4140), gp.nz[s]));
      v1 = to_bits(add2<T>(__byte_perm(q[s], 0x64646464u, 0x4342), gp.nz[s]));
    } else {
      // bf16 cannot hold 128 + u exactly for u >= 128: go through fp32 (2^23 + u), exact in bf16 after
      float f[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) f[i] = __uint_as_float(__byte_perm(q[s], 0x4B000000u, 0x7440 | i)) + gp.nzf[s];
      v0 = to_bits(__floats2bfloat162_rn(f[0], f[1]));
      v1 = to_bits(__floats2bfloat162_rn(f[2], f[3]));
    }
    b[s][0] = scale_reg<T, ZM>(v0, gp.s2[s], gp.m2[s]);
    b[s][1] = scale_reg<T, ZM>(v1, gp.s2[s], gp.m2[s]);
  }
}

}  // namespace qmm

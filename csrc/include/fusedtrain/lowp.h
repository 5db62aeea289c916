// float16 and bfloat16 storage, and their conversions to and from float32,
// written with integer bit manipulation once for the CPU loops and the CUDA
// kernels (FT_HD): the same bits on both, whatever the FPU's modes.
//
// Conversions to the narrow type:
//   round to nearest, ties to even  (float_to_half, float_to_bf16)
//     overflow gives +-inf; float16 subnormals are rounded like the rest.
//     NaN stays NaN with its sign, as NumPy and ml_dtypes convert it: the
//     canonical quiet NaN for bfloat16 (0x7FC0), the top 10 payload bits for
//     float16 (0x7C01 when those are all zero).
//   stochastic rounding  (float_to_half_sr, float_to_bf16_sr)
//     rounds |x| up to the next representable magnitude with probability
//     (|x| - lo) / (hi - lo) (lo <= |x| < hi the neighbours), using the
//     random word r: unbiased in expectation (to 2^-32 of an ulp for the
//     smallest float16 subnormals). Values past the largest finite number
//     may round to inf, as under round to nearest.
// Widening (half_to_float, bf16_to_float) is exact.
#pragma once

#include <cstdint>

#include "fusedtrain/hd.h"

namespace fusedtrain {

// Storage types: the 16 bits of one element, as NumPy's float16 and
// ml_dtypes' bfloat16 keep them.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

// c ? a : b with masks: GCC keeps some selects of integers as branches, which
// stops a loop from vectorising.
FT_HD uint32_t select_bits(bool c, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - uint32_t(c);
  return (a & mask) | (b & ~mask);
}

// ---------------------------------------------------------------------------
// bfloat16: the top 16 bits of a float32
// ---------------------------------------------------------------------------
FT_HD float bf16_to_float(BFloat16 h) { return ft_as_float(uint32_t(h.bits) << 16); }

// NaN -> the canonical quiet NaN with its sign; else `rounded`. Written with
// masks (no select) so that it vectorises inside any loop body.
FT_HD uint16_t bf16_or_nan(uint32_t u, uint32_t rounded) {
  const uint32_t nan = 0u - uint32_t((u & 0x7FFFFFFFu) > 0x7F800000u);  // all ones for NaN
  return uint16_t((rounded & ~nan) | ((((u >> 16) & 0x8000u) | 0x7FC0u) & nan));
}

FT_HD BFloat16 float_to_bf16(float f) {
  const uint32_t u = ft_as_uint(f);
  // adding 0x7FFF plus the lowest kept bit rounds half to even; a carry
  // moves into the exponent (up to inf) as it should
  return BFloat16{bf16_or_nan(u, (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
}

// r: 32 random bits (the low 16 are used).
FT_HD BFloat16 float_to_bf16_sr(float f, uint32_t r) {
  const uint32_t u = ft_as_uint(f);
  return BFloat16{bf16_or_nan(u, (u + (r & 0xFFFFu)) >> 16)};
}

// ---------------------------------------------------------------------------
// float16: 1 sign, 5 exponent (bias 15), 10 mantissa bits
// ---------------------------------------------------------------------------
FT_HD float half_to_float(Half h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1Fu;
  const uint32_t man = h.bits & 0x3FFu;
  // subnormal (and zero): man * 2^-24, exact in float32
  const float sub = float(int(man)) * 5.9604644775390625e-08f;
  const uint32_t wide = select_bits(exp == 31, 0x7F800000u | (man << 13),
                                    ((exp + 112u) << 23) | (man << 13));
  return ft_as_float(sign | select_bits(exp == 0, ft_as_uint(sub), wide));
}

namespace lowp_detail {
// For |float| bits a below 2^-14 (the float16 subnormal range): the value in
// float16 subnormal units of 2^-24 is significand(a) * 2^-(126 - exponent).
FT_HD uint32_t significand(uint32_t a) { return (a & 0x7FFFFFu) | 0x800000u; }
constexpr uint32_t kHalfNormalMin = 0x38800000u;  // 2^-14 as float32 bits
constexpr uint32_t kHalfOverflow = 0x47800000u;   // 2^16: beyond float16, inf
constexpr uint32_t kRebias = 0x38000000u;         // (127 - 15) << 23
// NaN: the top 10 payload bits, never all zero (that would read as inf)
FT_HD uint32_t half_nan(uint32_t a) {
  const uint32_t payload = (a >> 13) & 0x3FFu;
  return 0x7C00u | payload | uint32_t(payload == 0);
}
}  // namespace lowp_detail

// Every case is computed and one selected (no branch), so that the CPU loops
// vectorise; the variable shifts are per-lane shifts.
FT_HD Half float_to_half(float f) {
  using namespace lowp_detail;
  const uint32_t u = ft_as_uint(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // normal range [2^-14, 2^16): drop 13 mantissa bits, round half to even; a
  // carry moves into the exponent (65520 -> inf). (Wraps below the range,
  // where it is not selected.)
  uint32_t normal = (a - kRebias) >> 13;
  const uint32_t rem = a & 0x1FFFu;
  normal += uint32_t(rem + (normal & 1u) > 0x1000u);  // above half, or half and odd
  // subnormal range: significand * 2^-s in units of 2^-24, s = 126 - exponent
  // >= 14; s is clamped to 25, where every significand (< 2^24) rounds to 0,
  // as all smaller magnitudes do
  const int32_t e = int32_t(a >> 23);
  const int32_t lo = 126 - e < 14 ? 14 : 126 - e;
  const uint32_t sh = uint32_t(lo > 25 ? 25 : lo);
  const uint32_t m = significand(a);
  uint32_t sub = m >> sh;
  const uint32_t srem = m & ((1u << sh) - 1u);
  const uint32_t shalf = 1u << (sh - 1u);
  sub += uint32_t(srem + (sub & 1u) > shalf);
  const uint32_t h =
      select_bits(a > 0x7F800000u, half_nan(a),
                  select_bits(a >= kHalfOverflow, 0x7C00u,
                              select_bits(a >= kHalfNormalMin, normal, sub)));
  return Half{uint16_t(sign | h)};
}

// r: 32 random bits. Every case is computed and one selected, as in
// float_to_half. Below 2^-14 the value in float16 subnormal units is
// significand(a) * 2^-s, s = 126 - exponent >= 14, rounded up by an s-bit
// random number whose top (up to 32) bits are r; s is clamped to 63, where
// the sum stays below 2^63 and the result is 0, as for every smaller
// magnitude (rounding up there has probability < 2^-39).
FT_HD Half float_to_half_sr(float f, uint32_t r) {
  using namespace lowp_detail;
  const uint32_t u = ft_as_uint(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  const uint32_t normal = (a - kRebias + (r & 0x1FFFu)) >> 13;  // wraps below the range
  const int32_t e = 126 - int32_t(a >> 23);
  const int32_t lo = e > 14 ? e : 14;
  const uint32_t sh = uint32_t(lo < 63 ? lo : 63);
  const uint64_t rnd = (uint64_t(r) << 32) >> (64u - sh);
  const uint32_t sub = uint32_t((uint64_t(significand(a)) + rnd) >> sh);
  const uint32_t h =
      select_bits(a > 0x7F800000u, half_nan(a),
                  select_bits(a >= kHalfOverflow, 0x7C00u,
                              select_bits(a >= kHalfNormalMin, normal, sub)));
  return Half{uint16_t(sign | h)};
}

// ---------------------------------------------------------------------------
// what the kernels call: widen to the compute type, narrow to the storage
// ---------------------------------------------------------------------------
FT_HD float widen(float x) { return x; }
FT_HD double widen(double x) { return x; }
FT_HD float widen(Half x) { return half_to_float(x); }
FT_HD float widen(BFloat16 x) { return bf16_to_float(x); }

// dst = x rounded to nearest even (a plain store for float32 / float64)
FT_HD void narrow(float& dst, float x) { dst = x; }
FT_HD void narrow(double& dst, double x) { dst = x; }
FT_HD void narrow(Half& dst, float x) { dst = float_to_half(x); }
FT_HD void narrow(BFloat16& dst, float x) { dst = float_to_bf16(x); }

FT_HD void narrow_sr(Half& dst, float x, uint32_t r) { dst = float_to_half_sr(x, r); }
FT_HD void narrow_sr(BFloat16& dst, float x, uint32_t r) { dst = float_to_bf16_sr(x, r); }

}  // namespace fusedtrain

// Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw,
// "Parallel random numbers: as easy as 1, 2, 3" (SC'11), with uint32 math only
// so that the host compiler and nvcc produce the same bits: the dropout mask
// of a given (seed, offset, shape) is the same on the CPU, on the GPU and for
// any thread count. Verified against the known-answer vectors of the Random123
// distribution (tests/test_dropout.py).
//
// One call maps a 128-bit counter and a 64-bit key to 128 random bits:
//   10 rounds of  (hi0, lo0) = mulhilo(0xD2511F53, c0)
//                 (hi1, lo1) = mulhilo(0xCD9E8D57, c2)
//                 c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
//   with the key bumped by the Weyl constants (0x9E3779B9, 0xBB67AE85)
//   between rounds.
//
// Dropout stream: element i of an array uses word i % 4 of the block
//   philox(counter = (j_lo, j_hi, offset_lo, offset_hi), key = (seed_lo, seed_hi)),
//   j = i / 4,
// and is kept when that word is >= threshold = round(p * 2^32) (so it is
// dropped with probability p to within 2^-32).
#pragma once

#include <cstdint>

#include "fusedtrain/hd.h"

namespace fusedtrain {

struct Philox4 {
  uint32_t v[4];
};

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1

FT_HD uint32_t philox_mulhi(uint32_t a, uint32_t b, uint32_t& lo) {
  const uint64_t p = uint64_t(a) * uint64_t(b);
  lo = uint32_t(p);
  return uint32_t(p >> 32);
}

FT_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                        uint32_t k1) {
  uint32_t lo0, lo1;
  const uint32_t hi0 = philox_mulhi(kPhiloxM0, c0, lo0);
  const uint32_t hi1 = philox_mulhi(kPhiloxM1, c2, lo1);
  c0 = hi1 ^ c1 ^ k0;
  c1 = lo1;
  c2 = hi0 ^ c3 ^ k1;
  c3 = lo0;
}

// Philox4x32 with 10 rounds, written out so that no loop is left for a
// vectoriser to see through.
FT_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                            uint32_t k1) {
  philox_round(c0, c1, c2, c3, k0, k1);                                        // round 1
  philox_round(c0, c1, c2, c3, k0 + 1u * kPhiloxW0, k1 + 1u * kPhiloxW1);      // 2
  philox_round(c0, c1, c2, c3, k0 + 2u * kPhiloxW0, k1 + 2u * kPhiloxW1);      // 3
  philox_round(c0, c1, c2, c3, k0 + 3u * kPhiloxW0, k1 + 3u * kPhiloxW1);      // 4
  philox_round(c0, c1, c2, c3, k0 + 4u * kPhiloxW0, k1 + 4u * kPhiloxW1);      // 5
  philox_round(c0, c1, c2, c3, k0 + 5u * kPhiloxW0, k1 + 5u * kPhiloxW1);      // 6
  philox_round(c0, c1, c2, c3, k0 + 6u * kPhiloxW0, k1 + 6u * kPhiloxW1);      // 7
  philox_round(c0, c1, c2, c3, k0 + 7u * kPhiloxW0, k1 + 7u * kPhiloxW1);      // 8
  philox_round(c0, c1, c2, c3, k0 + 8u * kPhiloxW0, k1 + 8u * kPhiloxW1);      // 9
  philox_round(c0, c1, c2, c3, k0 + 9u * kPhiloxW0, k1 + 9u * kPhiloxW1);      // 10
  return Philox4{{c0, c1, c2, c3}};
}

// The four random words of dropout block j (elements 4j .. 4j + 3).
FT_HD Philox4 dropout_block(uint64_t j, uint64_t seed, uint64_t offset) {
  return philox4x32_10(uint32_t(j), uint32_t(j >> 32), uint32_t(offset), uint32_t(offset >> 32),
                       uint32_t(seed), uint32_t(seed >> 32));
}

// Drop threshold for probability p in [0, 1): round(p * 2^32), at most 2^32 - 1.
inline uint32_t dropout_threshold(double p) {
  const double t = p * 4294967296.0 + 0.5;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : uint32_t(t);
}

}  // namespace fusedtrain

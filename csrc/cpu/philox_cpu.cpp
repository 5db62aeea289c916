// Philox4x32-10 words for the CPU's dropout and stochastic rounding (see
// philox_cpu.h). One lane per block: the AVX-512 path runs 16 blocks at a
// time, taking each 32 x 32 -> 64-bit product from two even/odd vpmuludq.
#include "cpu/philox_cpu.h"

#include <vector>

#include "cpu/simd.h"
#include "fusedtrain/philox.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#include <immintrin.h>
#define FT_X86_PHILOX 1
#endif

namespace fusedtrain::cpu {
namespace {

using WordsFn = void (*)(uint32_t*, uint64_t, int64_t, uint64_t, uint64_t);

FT_CLONES void words_portable(uint32_t* __restrict words, uint64_t j0, int64_t nb, uint64_t seed,
                              uint64_t offset) {
  for (int64_t jj = 0; jj < nb; ++jj) {
    const Philox4 r = dropout_block(j0 + uint64_t(jj), seed, offset);
    for (int k = 0; k < 4; ++k) words[4 * jj + k] = r.v[k];
  }
}

#ifdef FT_X86_PHILOX
#define FT_TARGET_AVX512 __attribute__((target("avx512f")))

// hi:lo = m * c per 32-bit lane
FT_TARGET_AVX512 inline void mul_hi_lo(__m512i m, __m512i c, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(c, m);                        // lanes 0, 2, ...
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);  // lanes 1, 3, ...
  hi = _mm512_mask_blend_epi32(__mmask16(0xAAAA), _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mullo_epi32(c, m);
}

// Four vectors of 16 blocks' words (word k of block l in lane l of wk) to
// 64 consecutive words, block after block.
FT_TARGET_AVX512 inline void store_blocks(uint32_t* out, __m512i w0, __m512i w1, __m512i w2,
                                          __m512i w3) {
  const __m512i t0 = _mm512_unpacklo_epi32(w0, w1), t1 = _mm512_unpackhi_epi32(w0, w1);
  const __m512i t2 = _mm512_unpacklo_epi32(w2, w3), t3 = _mm512_unpackhi_epi32(w2, w3);
  // u_r: blocks r, 4 + r, 8 + r, 12 + r, one per 128-bit quarter
  const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
  const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
  const __m512i v0 = _mm512_shuffle_i32x4(u0, u1, 0x44), v1 = _mm512_shuffle_i32x4(u2, u3, 0x44);
  const __m512i v2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
  _mm512_storeu_si512(out, _mm512_shuffle_i32x4(v0, v1, 0x88));
  _mm512_storeu_si512(out + 16, _mm512_shuffle_i32x4(v0, v1, 0xDD));
  _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(v2, v3, 0x88));
  _mm512_storeu_si512(out + 48, _mm512_shuffle_i32x4(v2, v3, 0xDD));
}

FT_TARGET_AVX512 void words_avx512(uint32_t* words, uint64_t j0, int64_t nb, uint64_t seed,
                                   uint64_t offset) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i m0 = _mm512_set1_epi32(int(kPhiloxM0)), m1 = _mm512_set1_epi32(int(kPhiloxM1));
  const uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  int64_t jj = 0;
  for (; jj + 16 <= nb; jj += 16) {
    // counter (block index j, offset); j's low word carries into its high one
    const uint64_t j = j0 + uint64_t(jj);
    const __m512i j_lo = _mm512_set1_epi32(int(uint32_t(j)));
    const __m512i j_hi = _mm512_set1_epi32(int(uint32_t(j >> 32)));
    __m512i c0 = _mm512_add_epi32(j_lo, lane);
    __m512i c1 = _mm512_mask_add_epi32(j_hi, _mm512_cmplt_epu32_mask(c0, j_lo), j_hi,
                                       _mm512_set1_epi32(1));
    __m512i c2 = _mm512_set1_epi32(int(uint32_t(offset)));
    __m512i c3 = _mm512_set1_epi32(int(uint32_t(offset >> 32)));
    for (uint32_t r = 0; r < 10; ++r) {  // philox_round with key (k0, k1) + r (W0, W1)
      __m512i hi0, lo0, hi1, lo1;
      mul_hi_lo(m0, c0, hi0, lo0);
      mul_hi_lo(m1, c2, hi1, lo1);
      const __m512i ka = _mm512_set1_epi32(int(k0 + r * kPhiloxW0));
      const __m512i kb = _mm512_set1_epi32(int(k1 + r * kPhiloxW1));
      c0 = _mm512_ternarylogic_epi32(hi1, c1, ka, 0x96);  // a ^ b ^ c
      c1 = lo1;
      c2 = _mm512_ternarylogic_epi32(hi0, c3, kb, 0x96);
      c3 = lo0;
    }
    store_blocks(words + 4 * jj, c0, c1, c2, c3);
  }
  words_portable(words + 4 * jj, j0 + uint64_t(jj), nb - jj, seed, offset);
}
#endif  // FT_X86_PHILOX

struct Path {
  const char* name;
  WordsFn fn;
};

std::vector<Path> paths() {
  std::vector<Path> v;
#ifdef FT_X86_PHILOX
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) v.push_back({"avx512f", words_avx512});
#endif
  v.push_back({"portable", words_portable});
  return v;
}

const Path& path() {
  static const Path p = paths().front();
  return p;
}

}  // namespace

void philox_words(uint32_t* words, uint64_t j0, int64_t nb, uint64_t seed, uint64_t offset) {
  path().fn(words, j0, nb, seed, offset);
}

const char* philox_path() { return path().name; }

int64_t philox_selfcheck() {
  constexpr int64_t kBlocks = 1000;  // 62 vectors of 16 and a tail of 8
  const uint64_t starts[] = {0, 5, 1000003, (uint64_t(1) << 32) - 21, (uint64_t(1) << 32) - 1,
                             0xFFFFFFFFFFFFFFF0ull - kBlocks};
  const uint64_t keys[][2] = {{0, 0}, {42, 7}, {0xDEADBEEFCAFEF00Dull, 0x0123456789ABCDEFull}};
  std::vector<uint32_t> got(4 * kBlocks);
  int64_t bad = 0;
  for (const Path& p : paths()) {
    for (uint64_t j0 : starts) {
      for (const auto& key : keys) {
        p.fn(got.data(), j0, kBlocks, key[0], key[1]);
        for (int64_t jj = 0; jj < kBlocks; ++jj) {
          const Philox4 r = dropout_block(j0 + uint64_t(jj), key[0], key[1]);
          for (int k = 0; k < 4; ++k) bad += got[size_t(4 * jj + k)] != r.v[k];
        }
      }
    }
  }
  return bad;
}

}  // namespace fusedtrain::cpu

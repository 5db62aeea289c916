// Rounding to float16 / bfloat16 with the CPU's conversion instructions,
// blocks they would convert otherwise than lowp.h going through lowp.h (see
// lowp_cpu.h). The path is picked once, at the first call, from what the CPU
// reports.
#include "cpu/lowp_cpu.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/simd.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#include <immintrin.h>
#define FT_X86_CONVERT 1
#endif

namespace fusedtrain::cpu {
namespace {

template <typename S>
FT_CLONES void narrow_portable(S* __restrict out, const float* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) narrow(out[i], x[i]);
}

FT_CLONES void widen_portable(float* __restrict out, const Half* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = widen(x[i]);
}

template <typename S>
using NarrowFn = void (*)(S*, const float*, int64_t);
using WidenFn = void (*)(float*, const Half*, int64_t);

template <typename Fn>
struct Path {
  const char* name;
  Fn fn;
};

// lowp.h element by element over [i, i + len): a block with an input the
// instruction would convert differently
template <typename S>
inline void narrow_block(S* out, const float* x, int64_t len) {
  for (int64_t j = 0; j < len; ++j) narrow(out[j], x[j]);
}

#ifdef FT_X86_CONVERT
constexpr uint32_t kInfBits = 0x7F800000u;
constexpr uint32_t kHalfNormalMin = 0x38800000u;  // 2^-14

#define FT_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

// The lanes of v that a conversion instruction would give otherwise than
// lowp.h: NaN (|x| above inf) and nonzero |x| below `tiny_end` (|x| - 1,
// unsigned, below tiny_end - 1; zero wraps around and stays out).
__attribute__((target("avx512f"))) inline __mmask16 special_lanes(__m512 v, uint32_t tiny_end) {
  const __m512i a = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF));
  return _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(int(kInfBits))) |
         _mm512_cmplt_epu32_mask(_mm512_sub_epi32(a, _mm512_set1_epi32(1)),
                                 _mm512_set1_epi32(int(tiny_end - 1u)));
}

// bfloat16 vcvtne2ps2bf16: NaN payloads kept there (canonical NaN here);
// float32 subnormals (below 2^-126) flushed there, rounded here
FT_TARGET_BF16 inline __mmask16 bf16_special(__m512 v) { return special_lanes(v, 0x00800000u); }

// bfloat16, 32 elements a block: vcvtne2ps2bf16 unless a lane is special
FT_TARGET_BF16 void narrow_bf16_avx512bf16(BFloat16* out, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 lo = _mm512_loadu_ps(x + i);
    const __m512 hi = _mm512_loadu_ps(x + i + 16);
    if ((bf16_special(lo) | bf16_special(hi)) == 0) {
      _mm512_storeu_si512(out + i, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    } else {
      narrow_block(out + i, x + i, 32);
    }
  }
  narrow_block(out + i, x + i, n - i);
}

// float16, 16 elements a block: vcvtps2ph (to nearest even) unless the
// block holds a NaN (quiet bit set there, payload only here) or a nonzero
// |x| < 2^-14, whose float16 subnormal result MXCSR's flush-to-zero may
// flush there.
__attribute__((target("avx512f"))) void narrow_half_avx512(Half* out, const float* x,
                                                          int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    if (special_lanes(v, kHalfNormalMin) == 0) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                          _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else {
      narrow_block(out + i, x + i, 16);
    }
  }
  narrow_block(out + i, x + i, n - i);
}

// float16 with AVX2 + F16C, 8 elements a block, the same blocks set aside.
// |x| bits are below 2^31, so signed compares order them.
__attribute__((target("avx2,f16c"))) void narrow_half_f16c(Half* out, const float* x,
                                                           int64_t n) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  const __m256i inf = _mm256_set1_epi32(int(kInfBits));
  const __m256i zero = _mm256_setzero_si256();
  const __m256i normal_min = _mm256_set1_epi32(int(kHalfNormalMin));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256i a = _mm256_and_si256(_mm256_castps_si256(v), abs_mask);
    const __m256i tiny = _mm256_and_si256(_mm256_cmpgt_epi32(a, zero),
                                          _mm256_cmpgt_epi32(normal_min, a));
    const __m256i special = _mm256_or_si256(_mm256_cmpgt_epi32(a, inf), tiny);
    if (_mm256_testz_si256(special, special)) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                       _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    } else {
      narrow_block(out + i, x + i, 8);
    }
  }
  narrow_block(out + i, x + i, n - i);
}
// float16 -> float32 with F16C, 16 elements a block (two of 8): vcvtph2ps
// unless the block holds a NaN (|h| above 0x7C00) or a nonzero subnormal
// (|h| below 0x0400), which lowp.h widens. |h| fits int16, so signed
// compares order it.
__attribute__((target("avx2,f16c"))) void widen_half_f16c(float* out, const Half* x, int64_t n) {
  const __m256i abs_mask = _mm256_set1_epi16(0x7FFF);
  const __m256i inf = _mm256_set1_epi16(0x7C00);
  const __m256i zero = _mm256_setzero_si256();
  const __m256i normal_min = _mm256_set1_epi16(0x0400);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    const __m256i a = _mm256_and_si256(h, abs_mask);
    const __m256i tiny = _mm256_and_si256(_mm256_cmpgt_epi16(a, zero),
                                          _mm256_cmpgt_epi16(normal_min, a));
    const __m256i special = _mm256_or_si256(_mm256_cmpgt_epi16(a, inf), tiny);
    if (_mm256_testz_si256(special, special)) {
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm256_castsi256_si128(h)));
      _mm256_storeu_ps(out + i + 8, _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)));
    } else {
      for (int64_t j = i; j < i + 16; ++j) out[j] = widen(x[j]);
    }
  }
  for (; i < n; ++i) out[i] = widen(x[i]);
}
#endif  // FT_X86_CONVERT

// Every path this CPU can run, the fastest first; the portable loop last.
std::vector<Path<NarrowFn<BFloat16>>> bf16_paths() {
  std::vector<Path<NarrowFn<BFloat16>>> v;
#ifdef FT_X86_CONVERT
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw"))
    v.push_back({"avx512bf16", narrow_bf16_avx512bf16});
#endif
  v.push_back({"portable", narrow_portable<BFloat16>});
  return v;
}

std::vector<Path<NarrowFn<Half>>> half_paths() {
  std::vector<Path<NarrowFn<Half>>> v;
#ifdef FT_X86_CONVERT
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) v.push_back({"avx512f", narrow_half_avx512});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c"))
    v.push_back({"f16c", narrow_half_f16c});
#endif
  v.push_back({"portable", narrow_portable<Half>});
  return v;
}

std::vector<Path<WidenFn>> widen_paths() {
  std::vector<Path<WidenFn>> v;
#ifdef FT_X86_CONVERT
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c"))
    v.push_back({"f16c", widen_half_f16c});
#endif
  v.push_back({"portable", widen_portable});
  return v;
}

// The path taken: the first of Paths(), picked at the first call.
template <auto Paths>
const auto& chosen() {
  static const auto p = Paths().front();
  return p;
}

// Each chunk of consecutive bit patterns is converted in two calls (the
// first 37 elements, then the rest) so that blocks start at every alignment
// and the tails run too.
template <typename S>
int64_t selfcheck(const std::vector<Path<NarrowFn<S>>>& paths, int64_t stride) {
  constexpr int64_t kChunk = 1 << 16;
  constexpr int64_t kSplit = 37;
  const int64_t count = ((int64_t(1) << 32) + stride - 1) / stride;
  const int64_t chunks = (count + kChunk - 1) / kChunk;
  int64_t bad = 0;
#pragma omp parallel num_threads(num_threads()) reduction(+ : bad)
  {
    std::vector<float> x(kChunk);
    std::vector<S> want(kChunk), got(kChunk);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t first = c * kChunk;
      const int64_t len = std::min(kChunk, count - first);
      for (int64_t j = 0; j < len; ++j) x[j] = ft_as_float(uint32_t((first + j) * stride));
      for (int64_t j = 0; j < len; ++j) narrow(want[j], x[j]);
      for (const Path<NarrowFn<S>>& p : paths) {
        const int64_t head = std::min(kSplit, len);
        p.fn(got.data(), x.data(), head);
        p.fn(got.data() + head, x.data() + head, len - head);
        for (int64_t j = 0; j < len; ++j) bad += got[j].bits != want[j].bits;
      }
    }
  }
  return bad;
}

}  // namespace

void narrow_nearest(BFloat16* out, const float* x, int64_t n) {
  chosen<bf16_paths>().fn(out, x, n);
}
void narrow_nearest(Half* out, const float* x, int64_t n) { chosen<half_paths>().fn(out, x, n); }

void widen_exact(float* out, const Half* x, int64_t n) { chosen<widen_paths>().fn(out, x, n); }

const char* narrow_path_bf16() { return chosen<bf16_paths>().name; }
const char* narrow_path_half() { return chosen<half_paths>().name; }
const char* widen_path_half() { return chosen<widen_paths>().name; }

int64_t narrow_selfcheck(bool bf16, int64_t stride) {
  return bf16 ? selfcheck(bf16_paths(), stride) : selfcheck(half_paths(), stride);
}

int64_t widen_selfcheck() {
  // every pattern, from several starting points (blocks at every alignment)
  std::vector<Half> x(65536 + 16);
  for (size_t j = 0; j < x.size(); ++j) x[j] = Half{uint16_t(j)};
  std::vector<float> want(x.size()), got(x.size());
  for (size_t j = 0; j < x.size(); ++j) want[j] = widen(x[j]);
  int64_t bad = 0;
  for (const Path<WidenFn>& p : widen_paths()) {
    for (int64_t start : {0, 3, 8}) {
      const int64_t len = int64_t(x.size()) - start;
      p.fn(got.data() + start, x.data() + start, len);
      for (int64_t j = start; j < start + len; ++j)
        bad += ft_as_uint(got[j]) != ft_as_uint(want[j]);
    }
  }
  return bad;
}

}  // namespace fusedtrain::cpu

// FT_HD marks a function that both the host compiler and nvcc compile: the
// per-element math of every kernel is written once with it, so the CPU tests
// verify exactly what the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define FT_HD __host__ __device__ __forceinline__
#else
#define FT_HD inline __attribute__((always_inline))
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

namespace fusedtrain {

// Math functions spelled once for both compilers (the f-suffixed ones are
// device functions under nvcc).
FT_HD float ft_sqrt(float x) { return sqrtf(x); }
FT_HD double ft_sqrt(double x) { return sqrt(x); }
FT_HD float ft_exp(float x) { return expf(x); }
FT_HD double ft_exp(double x) { return exp(x); }
FT_HD float ft_tanh(float x) { return tanhf(x); }
FT_HD double ft_tanh(double x) { return tanh(x); }
FT_HD float ft_erf(float x) { return erff(x); }
FT_HD double ft_erf(double x) { return erf(x); }

// Bit casts (memcpy compiles to a register move on the host and is allowed in
// device code; std::bit_cast is C++20).
template <typename To, typename From>
FT_HD To ft_bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
  To to;
  memcpy(&to, &from, sizeof to);
  return to;
}
FT_HD uint32_t ft_as_uint(float x) { return ft_bit_cast<uint32_t>(x); }
FT_HD uint64_t ft_as_uint(double x) { return ft_bit_cast<uint64_t>(x); }
FT_HD float ft_as_float(uint32_t u) { return ft_bit_cast<float>(u); }
FT_HD double ft_as_double(uint64_t u) { return ft_bit_cast<double>(u); }

// sign(x): -1, +1, or x itself for zeros and NaN (as numpy.sign).
template <typename T>
FT_HD T ft_sign(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : x);
}

// max(a, b) that returns NaN when either is NaN (as torch.maximum).
template <typename T>
FT_HD T ft_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// torch's lerp: start + weight * (end - start), evaluated from the nearer end
// so that weight = 1 gives end exactly. Both ends are evaluated and one is
// selected (the same bits as a branch): GCC turns a loop-invariant branch
// into loop versions only up to a loop size, and the mixed-precision loops
// are larger.
template <typename T>
FT_HD T ft_lerp(T start, T end, T weight) {
  const T diff = end - start;
  const T from_start = start + weight * diff;
  const T from_end = end - diff * (T(1) - weight);
  return weight < T(0.5) ? from_start : from_end;
}

}  // namespace fusedtrain

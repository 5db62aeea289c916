// Benchmark-only kernels (cpu/bench_cpu.h): the optimizer steps' memory
// ceilings, compiled for the same SIMD levels as the steps (cpu/simd.h) so
// that the comparison is fair.
#include "cpu/bench_cpu.h"

#include "cpu/simd.h"
#include "fusedtrain/lowp.h"

namespace fusedtrain::cpu {

namespace {

// Same traffic as a step, trivial math: rw buffers read and written, the last
// buffer read only.
template <int NRW, typename T>
FT_CLONES void null_range(T* __restrict a, T* __restrict b, T* __restrict c,
                          T* __restrict d, const T* __restrict ro, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T x = ro[i];
    a[i] = a[i] + x;
    if constexpr (NRW > 1) b[i] = b[i] * T(0.5) + x;
    if constexpr (NRW > 2) c[i] = c[i] * T(0.5) + x;
    if constexpr (NRW > 3) d[i] = d[i] * T(0.5) + x;
  }
}

template <int NRW, typename T>
void null_list(const TensorList& tl) {
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    auto at = [&](int k) { return k < NRW ? tl.get<T>(i, k) + b : nullptr; };
    null_range<NRW, T>(at(0), at(1), at(2), at(3), tl.get<T>(i, NRW) + b, e - b);
  });
}

template <typename T>
void null_typed(const TensorList& tl, int n_rw) {
  switch (n_rw) {
    case 1: return null_list<1, T>(tl);
    case 2: return null_list<2, T>(tl);
    case 3: return null_list<3, T>(tl);
    default: return null_list<4, T>(tl);
  }
}

template <int NRW>
FT_CLONES void null_mixed_range(BFloat16* __restrict p, const BFloat16* __restrict g,
                                float* __restrict a, float* __restrict b, float* __restrict c,
                                int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = widen(g[i]);
    a[i] = a[i] + x;
    if constexpr (NRW > 1) b[i] = b[i] * 0.5f + x;
    if constexpr (NRW > 2) c[i] = c[i] * 0.5f + x;
    p[i] = BFloat16{uint16_t(ft_as_uint(a[i]) >> 16)};
  }
}

template <int NRW>
void null_mixed_list(const TensorList& tl) {
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    auto at = [&](int k) { return k < NRW ? tl.get<float>(i, 2 + k) + b : nullptr; };
    null_mixed_range<NRW>(tl.get<BFloat16>(i, 0) + b, tl.get<BFloat16>(i, 1) + b, at(0), at(1),
                          at(2), e - b);
  });
}

}  // namespace

void null_step(const TensorList& tl, DType dt, int n_rw) {
  dt == DType::F32 ? null_typed<float>(tl, n_rw) : null_typed<double>(tl, n_rw);
}

void null_mixed_step(const TensorList& tl, int n_rw) {
  switch (n_rw) {
    case 1: return null_mixed_list<1>(tl);
    case 2: return null_mixed_list<2>(tl);
    default: return null_mixed_list<3>(tl);
  }
}

}  // namespace fusedtrain::cpu

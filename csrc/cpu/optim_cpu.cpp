// Fused optimizer loops on the CPU. Each *_range function is the whole inner
// loop over one contiguous piece of one tensor: it calls the shared per-element
// math (optim_math.h) and is compiled three times (AVX-512, AVX2, baseline),
// the best one picked at load time for the CPU it runs on.
#include "cpu/optim_cpu.h"

#include "cpu/simd.h"

namespace fusedtrain::cpu {

const char* simd_level() {
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
#endif
  return "baseline";
}

namespace {

// ---------------------------------------------------------------------------
// inner loops: p, g, states are (n,) pieces of one tensor
// ---------------------------------------------------------------------------
template <WeightDecay WD, AmsGrad A, typename T>
FT_CLONES void adam_range(T* __restrict p, const T* __restrict g, T* __restrict m,
                          T* __restrict v, T* __restrict vmax, int64_t n,
                          const AdamScalars<T> s) {
  for (int64_t i = 0; i < n; ++i) {
    T pi = p[i], mi = m[i], vi = v[i];
    T vmi = T(0);
    if constexpr (A == AmsGrad::On) vmi = vmax[i];
    adam_update<WD, A>(pi, g[i], mi, vi, vmi, s);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if constexpr (A == AmsGrad::On) vmax[i] = vmi;
  }
}

template <Momentum M, Nesterov N, typename T>
FT_CLONES void sgd_range(T* __restrict p, const T* __restrict g, T* __restrict buf,
                         int64_t n, const SgdScalars<T> s) {
  for (int64_t i = 0; i < n; ++i) {
    T pi = p[i];
    T bi = T(0);
    if constexpr (M == Momentum::On) bi = buf[i];
    sgd_update<M, N>(pi, g[i], bi, s);
    p[i] = pi;
    if constexpr (M != Momentum::Off) buf[i] = bi;
  }
}

template <Centered C, Momentum M, typename T>
FT_CLONES void rmsprop_range(T* __restrict p, const T* __restrict g, T* __restrict sq,
                             T* __restrict ga, T* __restrict buf, int64_t n,
                             const RmspropScalars<T> s) {
  for (int64_t i = 0; i < n; ++i) {
    T pi = p[i], si = sq[i];
    T gai = T(0), bi = T(0);
    if constexpr (C == Centered::On) gai = ga[i];
    if constexpr (M == Momentum::On) bi = buf[i];
    rmsprop_update<C, M>(pi, g[i], si, gai, bi, s);
    p[i] = pi;
    sq[i] = si;
    if constexpr (C == Centered::On) ga[i] = gai;
    if constexpr (M == Momentum::On) buf[i] = bi;
  }
}

template <typename T>
FT_CLONES void adagrad_range(T* __restrict p, const T* __restrict g, T* __restrict sum,
                             int64_t n, const AdagradScalars<T> s) {
  for (int64_t i = 0; i < n; ++i) {
    T pi = p[i], si = sum[i];
    adagrad_update(pi, g[i], si, s);
    p[i] = pi;
    sum[i] = si;
  }
}

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

// ---------------------------------------------------------------------------
// drivers: pick the variant once, then one parallel pass over the list
// ---------------------------------------------------------------------------
template <typename T, WeightDecay WD, AmsGrad A>
void adam_list(const TensorList& tl, const AdamScalars<T>& s) {
  using namespace adam_slot;
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    T* vmax = A == AmsGrad::On ? tl.get<T>(i, kMaxExpAvgSq) + b : nullptr;
    adam_range<WD, A, T>(tl.get<T>(i, kParam) + b, tl.get<T>(i, kGrad) + b,
                         tl.get<T>(i, kExpAvg) + b, tl.get<T>(i, kExpAvgSq) + b, vmax,
                         e - b, s);
  });
}

template <typename T>
void adam_typed(const TensorList& tl, const AdamHyper& h, int64_t step) {
  const auto s = make_adam_scalars<T>(h, step);
  with_adam_variant(h, [&](auto v) {
    using V = decltype(v);
    adam_list<T, V::kWeightDecay, V::kAmsGrad>(tl, s);
  });
}

template <typename T, Momentum M, Nesterov N>
void sgd_list(const TensorList& tl, const SgdScalars<T>& s) {
  using namespace sgd_slot;
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    T* buf = M != Momentum::Off ? tl.get<T>(i, kMomentumBuffer) + b : nullptr;
    sgd_range<M, N, T>(tl.get<T>(i, kParam) + b, tl.get<T>(i, kGrad) + b, buf, e - b, s);
  });
}

template <typename T>
void sgd_typed(const TensorList& tl, const SgdHyper& h, int64_t step) {
  const auto s = make_sgd_scalars<T>(h);
  with_sgd_variant(h, step, [&](auto v) {
    using V = decltype(v);
    sgd_list<T, V::kMomentum, V::kNesterov>(tl, s);
  });
}

template <typename T, Centered C, Momentum M>
void rmsprop_list(const TensorList& tl, const RmspropScalars<T>& s) {
  using namespace rmsprop_slot;
  constexpr int kGradAvg = kOptional;
  constexpr int kBuf = kOptional + (C == Centered::On ? 1 : 0);
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    T* ga = C == Centered::On ? tl.get<T>(i, kGradAvg) + b : nullptr;
    T* buf = M == Momentum::On ? tl.get<T>(i, kBuf) + b : nullptr;
    rmsprop_range<C, M, T>(tl.get<T>(i, kParam) + b, tl.get<T>(i, kGrad) + b,
                           tl.get<T>(i, kSquareAvg) + b, ga, buf, e - b, s);
  });
}

template <typename T>
void rmsprop_typed(const TensorList& tl, const RmspropHyper& h) {
  const auto s = make_rmsprop_scalars<T>(h);
  with_rmsprop_variant(h, [&](auto v) {
    using V = decltype(v);
    rmsprop_list<T, V::kCentered, V::kMomentum>(tl, s);
  });
}

template <typename T>
void adagrad_typed(const TensorList& tl, const AdagradHyper& h, int64_t step) {
  using namespace adagrad_slot;
  const auto s = make_adagrad_scalars<T>(h, step);
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    adagrad_range<T>(tl.get<T>(i, kParam) + b, tl.get<T>(i, kGrad) + b,
                     tl.get<T>(i, kSum) + b, e - b, s);
  });
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

}  // namespace

void adam_step(const TensorList& tl, DType dt, const AdamHyper& h, int64_t step) {
  dt == DType::F32 ? adam_typed<float>(tl, h, step) : adam_typed<double>(tl, h, step);
}
void sgd_step(const TensorList& tl, DType dt, const SgdHyper& h, int64_t step) {
  dt == DType::F32 ? sgd_typed<float>(tl, h, step) : sgd_typed<double>(tl, h, step);
}
void rmsprop_step(const TensorList& tl, DType dt, const RmspropHyper& h) {
  dt == DType::F32 ? rmsprop_typed<float>(tl, h) : rmsprop_typed<double>(tl, h);
}
void adagrad_step(const TensorList& tl, DType dt, const AdagradHyper& h, int64_t step) {
  dt == DType::F32 ? adagrad_typed<float>(tl, h, step) : adagrad_typed<double>(tl, h, step);
}
void null_step(const TensorList& tl, DType dt, int n_rw) {
  dt == DType::F32 ? null_typed<float>(tl, n_rw) : null_typed<double>(tl, n_rw);
}

}  // namespace fusedtrain::cpu

// Fused optimizer loops on the CPU. Each *_range function is the whole inner
// loop over one contiguous piece of one tensor: it calls the shared per-element
// math (optim_math.h) and is compiled three times (AVX-512, AVX2, baseline),
// the best one picked at load time for the CPU it runs on.
#include "cpu/optim_cpu.h"

#include <atomic>

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
// inner loops: p, g, states (and master) are (n,) pieces of one tensor; rc
// numbers the piece's elements for stochastic rounding. The element
// functions (optim_elem.h) do the loads, the update and the stores.
// ---------------------------------------------------------------------------
template <class L, WeightDecay WD, AmsGrad A>
FT_CLONES void adam_range(typename L::param_t* __restrict p, const typename L::param_t* __restrict g,
                          float* __restrict master, typename L::state_t* __restrict m,
                          typename L::state_t* __restrict v, typename L::state_t* __restrict vmax,
                          int64_t n, const AdamScalars<typename L::T> s, const RoundCtx rc) {
  for (int64_t i = 0; i < n; ++i) adam_element<L, WD, A>(p, g, master, m, v, vmax, i, s, rc);
}

template <class L, Momentum M, Nesterov N>
FT_CLONES void sgd_range(typename L::param_t* __restrict p, const typename L::param_t* __restrict g,
                         float* __restrict master, typename L::state_t* __restrict buf, int64_t n,
                         const SgdScalars<typename L::T> s, const RoundCtx rc) {
  for (int64_t i = 0; i < n; ++i) sgd_element<L, M, N>(p, g, master, buf, i, s, rc);
}

template <class L, Centered C, Momentum M>
FT_CLONES void rmsprop_range(typename L::param_t* __restrict p,
                             const typename L::param_t* __restrict g, float* __restrict master,
                             typename L::state_t* __restrict sq, typename L::state_t* __restrict ga,
                             typename L::state_t* __restrict buf, int64_t n,
                             const RmspropScalars<typename L::T> s, const RoundCtx rc) {
  for (int64_t i = 0; i < n; ++i) rmsprop_element<L, C, M>(p, g, master, sq, ga, buf, i, s, rc);
}

template <class L>
FT_CLONES void adagrad_range(typename L::param_t* __restrict p,
                             const typename L::param_t* __restrict g, float* __restrict master,
                             typename L::state_t* __restrict sum, int64_t n,
                             const AdagradScalars<typename L::T> s, const RoundCtx rc) {
  for (int64_t i = 0; i < n; ++i) adagrad_element<L>(p, g, master, sum, i, s, rc);
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
// drivers: pick the layout and the variant once, then one parallel pass over
// the list
// ---------------------------------------------------------------------------

// The typed pieces of tensor i from element b on: buffer k, the master
// weights (last slot, narrow params only) and the rounding context.
template <class L>
struct Pieces {
  const TensorList& tl;
  const StepLayout& lay;
  int64_t i, b;
  typename L::param_t* param(int k) const { return tl.get<typename L::param_t>(i, k) + b; }
  typename L::state_t* state(int k) const { return tl.get<typename L::state_t>(i, k) + b; }
  typename L::state_t* state_if(bool on, int k) const { return on ? state(k) : nullptr; }
  float* master() const { return L::kMaster ? tl.get<float>(i, tl.slots - 1) + b : nullptr; }
  RoundCtx round() const { return RoundCtx{lay.seed, lay.offset, tl.offsets[i] + b}; }
};

template <class L, WeightDecay WD, AmsGrad A>
void adam_list(const TensorList& tl, const StepLayout& lay, const AdamScalars<typename L::T>& s) {
  using namespace adam_slot;
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    const Pieces<L> x{tl, lay, i, b};
    adam_range<L, WD, A>(x.param(kParam), x.param(kGrad), x.master(), x.state(kExpAvg),
                         x.state(kExpAvgSq), x.state_if(A == AmsGrad::On, kMaxExpAvgSq), e - b,
                         s, x.round());
  });
}

template <class L, Momentum M, Nesterov N>
void sgd_list(const TensorList& tl, const StepLayout& lay, const SgdScalars<typename L::T>& s) {
  using namespace sgd_slot;
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    const Pieces<L> x{tl, lay, i, b};
    sgd_range<L, M, N>(x.param(kParam), x.param(kGrad), x.master(),
                       x.state_if(M != Momentum::Off, kMomentumBuffer), e - b, s, x.round());
  });
}

template <class L, Centered C, Momentum M>
void rmsprop_list(const TensorList& tl, const StepLayout& lay,
                  const RmspropScalars<typename L::T>& s) {
  using namespace rmsprop_slot;
  constexpr int kGradAvg = kOptional;
  constexpr int kBuf = kOptional + (C == Centered::On ? 1 : 0);
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    const Pieces<L> x{tl, lay, i, b};
    rmsprop_range<L, C, M>(x.param(kParam), x.param(kGrad), x.master(), x.state(kSquareAvg),
                           x.state_if(C == Centered::On, kGradAvg),
                           x.state_if(M == Momentum::On, kBuf), e - b, s, x.round());
  });
}

template <class L>
void adagrad_list(const TensorList& tl, const StepLayout& lay,
                  const AdagradScalars<typename L::T>& s) {
  using namespace adagrad_slot;
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    const Pieces<L> x{tl, lay, i, b};
    adagrad_range<L>(x.param(kParam), x.param(kGrad), x.master(), x.state(kSum), e - b, s,
                     x.round());
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

// The exponent bits of every element, OR-ed: all ones exactly when some
// element is inf or NaN (no branch in the loop, so it vectorises).
template <typename U>
FT_CLONES bool range_nonfinite(const U* __restrict x, int64_t n, U exp_mask) {
  U acc = 0;
  for (int64_t i = 0; i < n; ++i) acc |= U((x[i] & exp_mask) == exp_mask);
  return acc != 0;
}

template <typename U>
bool list_nonfinite(const TensorList& tl, U exp_mask) {
  std::atomic<bool> found{false};
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    if (range_nonfinite<U>(tl.get<U>(i, 0) + b, e - b, exp_mask))
      found.store(true, std::memory_order_relaxed);
  });
  return found.load();
}

}  // namespace

void adam_step(const TensorList& tl, const StepLayout& lay, const AdamHyper& h, int64_t step) {
  with_layout(lay.param, lay.state, lay.stochastic, [&](auto l) {
    using L = decltype(l);
    const auto s = make_adam_scalars<typename L::T>(h, step);
    with_adam_variant(h, [&](auto v) {
      using V = decltype(v);
      adam_list<L, V::kWeightDecay, V::kAmsGrad>(tl, lay, s);
    });
  });
}

void sgd_step(const TensorList& tl, const StepLayout& lay, const SgdHyper& h, int64_t step) {
  with_layout(lay.param, lay.state, lay.stochastic, [&](auto l) {
    using L = decltype(l);
    const auto s = make_sgd_scalars<typename L::T>(h);
    with_sgd_variant(h, step, [&](auto v) {
      using V = decltype(v);
      sgd_list<L, V::kMomentum, V::kNesterov>(tl, lay, s);
    });
  });
}

void rmsprop_step(const TensorList& tl, const StepLayout& lay, const RmspropHyper& h) {
  with_layout(lay.param, lay.state, lay.stochastic, [&](auto l) {
    using L = decltype(l);
    const auto s = make_rmsprop_scalars<typename L::T>(h);
    with_rmsprop_variant(h, [&](auto v) {
      using V = decltype(v);
      rmsprop_list<L, V::kCentered, V::kMomentum>(tl, lay, s);
    });
  });
}

void adagrad_step(const TensorList& tl, const StepLayout& lay, const AdagradHyper& h,
                  int64_t step) {
  with_layout(lay.param, lay.state, lay.stochastic, [&](auto l) {
    using L = decltype(l);
    adagrad_list<L>(tl, lay, make_adagrad_scalars<typename L::T>(h, step));
  });
}

void null_step(const TensorList& tl, DType dt, int n_rw) {
  dt == DType::F32 ? null_typed<float>(tl, n_rw) : null_typed<double>(tl, n_rw);
}

bool any_nonfinite(const TensorList& tl, DType dt) {
  switch (dt) {
    case DType::F32: return list_nonfinite<uint32_t>(tl, 0x7F800000u);
    case DType::F64: return list_nonfinite<uint64_t>(tl, 0x7FF0000000000000ull);
    case DType::F16: return list_nonfinite<uint16_t>(tl, 0x7C00u);
    case DType::BF16: return list_nonfinite<uint16_t>(tl, 0x7F80u);
  }
  return false;
}

}  // namespace fusedtrain::cpu

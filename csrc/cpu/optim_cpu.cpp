// Fused optimizer loops on the CPU. Each *_range function is the whole inner
// loop over one contiguous piece of one tensor: it calls the shared per-element
// math (optim_math.h) and is compiled three times (AVX-512, AVX2, baseline),
// the best one picked at load time for the CPU it runs on.
#include "cpu/optim_cpu.h"

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "cpu/lowp_cpu.h"
#include "cpu/philox_cpu.h"
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
// inner loops of a float32 / float64 step: p, g and the states are (n,)
// pieces of one tensor. The element functions (optim_elem.h) do the loads,
// the update and the stores (master and rc are unused by these layouts).
// ---------------------------------------------------------------------------
template <class L, WeightDecay WD, AmsGrad A>
FT_CLONES void adam_range(typename L::param_t* __restrict p, const typename L::grad_t* __restrict g,
                          float* __restrict master, typename L::state_t* __restrict m,
                          typename L::state_t* __restrict v, typename L::state_t* __restrict vmax,
                          int64_t n, const AdamScalars<typename L::T> s, const RoundCtx rc) {
  for (int64_t i = 0; i < n; ++i) adam_element<L, WD, A>(p, g, master, m, v, vmax, i, s, rc);
}

template <class L, Momentum M, Nesterov N>
FT_CLONES void sgd_range(typename L::param_t* __restrict p, const typename L::grad_t* __restrict g,
                         float* __restrict master, typename L::state_t* __restrict buf, int64_t n,
                         const SgdScalars<typename L::T> s, const RoundCtx rc) {
  for (int64_t i = 0; i < n; ++i) sgd_element<L, M, N>(p, g, master, buf, i, s, rc);
}

template <class L, Centered C, Momentum M>
FT_CLONES void rmsprop_range(typename L::param_t* __restrict p,
                             const typename L::grad_t* __restrict g, float* __restrict master,
                             typename L::state_t* __restrict sq, typename L::state_t* __restrict ga,
                             typename L::state_t* __restrict buf, int64_t n,
                             const RmspropScalars<typename L::T> s, const RoundCtx rc) {
  for (int64_t i = 0; i < n; ++i) rmsprop_element<L, C, M>(p, g, master, sq, ga, buf, i, s, rc);
}

template <class L>
FT_CLONES void adagrad_range(typename L::param_t* __restrict p,
                             const typename L::grad_t* __restrict g, float* __restrict master,
                             typename L::state_t* __restrict sum, int64_t n,
                             const AdagradScalars<typename L::T> s, const RoundCtx rc) {
  for (int64_t i = 0; i < n; ++i) adagrad_element<L>(p, g, master, sum, i, s, rc);
}

// ---------------------------------------------------------------------------
// mixed precision: GCC does not vectorise the element functions of a narrow
// layout as one loop (stores of the narrow param in the larger body keep
// branches that if-conversion gives up on), so a narrow piece is stepped
// tile by tile: bfloat16 states are widened into float32 tiles (on the stack,
// in L1), the float32 loop steps the master and the states reading the narrow
// gradient itself, the tiles are narrowed back and the master rounded into
// the param. Each pass vectorises; the arithmetic per element is the element
// functions' exactly (the CUDA kernels call those).
// ---------------------------------------------------------------------------
constexpr int64_t kTile = 512;
// The gradient as the float32 loop reads it: a bfloat16 gradient as it is (a
// shift widens it, in the loop), a float16 one from a float32 tile (its
// widening has selects that keep GCC from vectorising the whole step).
template <typename P>
using TileGrad = std::conditional_t<std::is_same_v<P, Half>, float, P>;
// float32 params (the master) and states with the gradient of narrow params P
template <typename P>
using TileLayout = Layout<float, float, Rounding::Nearest, TileGrad<P>>;

template <typename S>
FT_CLONES void widen_range(const S* __restrict x, float* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = widen(x[i]);
}

// Element i takes word (rc.base + i) % 4 of Philox block (rc.base + i) / 4:
// the blocks covering the piece first (vectorised across blocks), then the
// rounding. n <= kTile.
template <typename P>
FT_CLONES void narrow_sr_range(P* __restrict out, const float* __restrict x, int64_t n,
                               const RoundCtx rc) {
  uint32_t words[kTile + 4];
  const uint64_t e0 = uint64_t(rc.base);
  const int64_t skip = int64_t(e0 & 3u);
  philox_words(words, e0 >> 2, (skip + n + 3) / 4, rc.seed, rc.offset);
  for (int64_t i = 0; i < n; ++i) narrow_sr(out[i], x[i], words[skip + i]);
}

// A float32 view of n elements of a state buffer: the buffer itself when it
// is float32, else `tile` filled from it (null stays null: an unused state).
template <typename S>
float* widened(S* x, float* tile, int64_t n) {
  if constexpr (std::is_same_v<S, float>) {
    return x;
  } else {
    if (x == nullptr) return nullptr;
    widen_range(x, tile, n);
    return tile;
  }
}

template <typename S>
void narrowed(S* x, const float* tile, int64_t n) {
  if constexpr (!std::is_same_v<S, float>) {
    if (x != nullptr) narrow_nearest(x, tile, n);
  }
}

// Steps the n-element narrow piece (p, g, master, states s0..s2, null where
// unused) with plain(master, g, s0_32, s1_32, s2_32, len), one tile at a
// time, then rounds the master into p.
template <class L, class Plain>
void mixed_tiles(typename L::param_t* p, const typename L::param_t* g, float* master,
                 typename L::state_t* s0, typename L::state_t* s1, typename L::state_t* s2,
                 int64_t n, const RoundCtx& rc, Plain&& plain) {
  using P = typename L::param_t;
  alignas(64) float t0[kTile], t1[kTile], t2[kTile], tg[kTile];
  for (int64_t b = 0; b < n; b += kTile) {
    const int64_t len = std::min(kTile, n - b);
    auto at = [&](typename L::state_t* x) { return x == nullptr ? nullptr : x + b; };
    float* w0 = widened(at(s0), t0, len);
    float* w1 = widened(at(s1), t1, len);
    float* w2 = widened(at(s2), t2, len);
    if constexpr (std::is_same_v<TileGrad<P>, float>) {
      widen_exact(tg, g + b, len);
      plain(master + b, static_cast<const float*>(tg), w0, w1, w2, len);
    } else {
      plain(master + b, g + b, w0, w1, w2, len);
    }
    narrowed(at(s0), w0, len);
    narrowed(at(s1), w1, len);
    narrowed(at(s2), w2, len);
    if constexpr (L::kRounding == Rounding::Stochastic) {
      narrow_sr_range(p + b, master + b, len, RoundCtx{rc.seed, rc.offset, rc.base + b});
    } else {
      narrow_nearest(p + b, master + b, len);
    }
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
    auto* vmax = x.state_if(A == AmsGrad::On, kMaxExpAvgSq);
    if constexpr (L::kMaster) {
      mixed_tiles<L>(x.param(kParam), x.param(kGrad), x.master(), x.state(kExpAvg),
                     x.state(kExpAvgSq), vmax, e - b, x.round(),
                     [&](float* p, const auto* g, float* m, float* v, float* vm, int64_t n) {
                       using TL = TileLayout<typename L::param_t>;
                       adam_range<TL, WD, A>(p, g, nullptr, m, v, vm, n, s, {});
                     });
    } else {
      adam_range<L, WD, A>(x.param(kParam), x.param(kGrad), nullptr, x.state(kExpAvg),
                           x.state(kExpAvgSq), vmax, e - b, s, {});
    }
  });
}

template <class L, Momentum M, Nesterov N>
void sgd_list(const TensorList& tl, const StepLayout& lay, const SgdScalars<typename L::T>& s) {
  using namespace sgd_slot;
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    const Pieces<L> x{tl, lay, i, b};
    auto* buf = x.state_if(M != Momentum::Off, kMomentumBuffer);
    if constexpr (L::kMaster) {
      mixed_tiles<L>(x.param(kParam), x.param(kGrad), x.master(), buf, nullptr, nullptr, e - b,
                     x.round(), [&](float* p, const auto* g, float* bf, float*, float*, int64_t n) {
                       sgd_range<TileLayout<typename L::param_t>, M, N>(p, g, nullptr, bf, n, s, {});
                     });
    } else {
      sgd_range<L, M, N>(x.param(kParam), x.param(kGrad), nullptr, buf, e - b, s, {});
    }
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
    auto* ga = x.state_if(C == Centered::On, kGradAvg);
    auto* buf = x.state_if(M == Momentum::On, kBuf);
    if constexpr (L::kMaster) {
      mixed_tiles<L>(x.param(kParam), x.param(kGrad), x.master(), x.state(kSquareAvg), ga, buf,
                     e - b, x.round(),
                     [&](float* p, const auto* g, float* sq, float* a, float* bf, int64_t n) {
                       using TL = TileLayout<typename L::param_t>;
                       rmsprop_range<TL, C, M>(p, g, nullptr, sq, a, bf, n, s, {});
                     });
    } else {
      rmsprop_range<L, C, M>(x.param(kParam), x.param(kGrad), nullptr, x.state(kSquareAvg), ga,
                             buf, e - b, s, {});
    }
  });
}

template <class L>
void adagrad_list(const TensorList& tl, const StepLayout& lay,
                  const AdagradScalars<typename L::T>& s) {
  using namespace adagrad_slot;
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    const Pieces<L> x{tl, lay, i, b};
    if constexpr (L::kMaster) {
      mixed_tiles<L>(x.param(kParam), x.param(kGrad), x.master(), x.state(kSum), nullptr, nullptr,
                     e - b, x.round(),
                     [&](float* p, const auto* g, float* sum, float*, float*, int64_t n) {
                       adagrad_range<TileLayout<typename L::param_t>>(p, g, nullptr, sum, n, s, {});
                     });
    } else {
      adagrad_range<L>(x.param(kParam), x.param(kGrad), nullptr, x.state(kSum), e - b, s, {});
    }
  });
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

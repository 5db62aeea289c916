// One element of an optimizer step with its loads and stores, for every
// storage layout: the CPU loops (cpu/optim_cpu.cpp) and the CUDA mixed-
// precision kernels (cuda/optim_cuda.cu) call these, and these call the
// update rules of optim_math.h.
//
// Layouts (the dtype combination is a template parameter, picked once per
// call by with_layout; the inner loop has no switch):
//   float32 / float64 params: params, grads and states of that dtype, math
//     in it; the plain step.
//   float16 / bfloat16 params with float32 master weights: the gradient is
//     read in the narrow type and widened, the step updates the float32
//     master and the states (float32, or bfloat16 rounded to nearest even),
//     in float32, and writes the master back and the parameter rounded to
//     the narrow type (to nearest even, or stochastically), in one pass.
#pragma once

#include <cstdint>
#include <type_traits>

#include "fusedtrain/dtype.h"
#include "fusedtrain/hd.h"
#include "fusedtrain/lowp.h"
#include "fusedtrain/optim_math.h"
#include "fusedtrain/philox.h"

namespace fusedtrain {

enum class Rounding { Nearest, Stochastic };

template <typename P, typename S, Rounding R, typename G = P>
struct Layout {
  using param_t = P;  // params
  using grad_t = G;   // grads: the params' dtype (G differs only in the CPU's tiles)
  using state_t = S;  // optimizer states
  using T = std::conditional_t<std::is_same_v<P, double>, double, float>;  // math
  static constexpr bool kMaster = std::is_same_v<P, Half> || std::is_same_v<P, BFloat16>;
  static constexpr Rounding kRounding = R;
  static_assert(kMaster || std::is_same_v<P, S>, "float32/float64 steps keep states in their dtype");
  static_assert(kMaster || std::is_same_v<P, G> || std::is_same_v<P, float>,
                "a narrow gradient goes with float32 (master) params");
  static_assert(kMaster || R == Rounding::Nearest, "stochastic rounding needs a narrow param");
};

// Calls f(Layout<...>{}) for a supported combination (the bindings reject the
// others before a kernel runs; an unsupported one here is a no-op).
template <class F>
void with_layout(DType param, DType state, bool stochastic, F&& f) {
  using R = Rounding;
  auto narrow_param = [&](auto p) {
    using P = decltype(p);
    if (state == DType::BF16) {
      stochastic ? f(Layout<P, BFloat16, R::Stochastic>{}) : f(Layout<P, BFloat16, R::Nearest>{});
    } else {
      stochastic ? f(Layout<P, float, R::Stochastic>{}) : f(Layout<P, float, R::Nearest>{});
    }
  };
  switch (param) {
    case DType::F32: return f(Layout<float, float, R::Nearest>{});
    case DType::F64: return f(Layout<double, double, R::Nearest>{});
    case DType::F16: return narrow_param(Half{});
    case DType::BF16: return narrow_param(BFloat16{});
  }
}

// The random word of element `base + i` for stochastic rounding: word
// (base + i) % 4 of Philox4x32-10 block (base + i) / 4 under key `seed` and
// counter offset `offset` (the step), as the dropout stream draws them
// (philox.h). `base + i` is the element's index in the concatenation of all
// the call's tensors, so the bits do not depend on the thread split, on the
// GPU's chunking, or on whether a list tiles one arena.
struct RoundCtx {
  uint64_t seed = 0, offset = 0;
  int64_t base = 0;
  FT_HD uint32_t bits(int64_t i) const {
    const uint64_t e = uint64_t(base + i);
    return dropout_block(e >> 2, seed, offset).v[e & 3u];
  }
};

template <class L>
FT_HD typename L::T load_param(const typename L::param_t* p, const float* master, int64_t i) {
  if constexpr (L::kMaster) {
    return master[i];
  } else {
    return p[i];
  }
}

template <class L>
FT_HD void store_param(typename L::param_t* p, float* master, int64_t i, typename L::T x,
                       const RoundCtx& rc) {
  if constexpr (L::kMaster) {
    master[i] = x;
    if constexpr (L::kRounding == Rounding::Stochastic) {
      narrow_sr(p[i], x, rc.bits(i));
    } else {
      narrow(p[i], x);
    }
  } else {
    p[i] = x;
  }
}

// ---------------------------------------------------------------------------
// element i of each optimizer; pointers are the call's (n,) pieces, optional
// state pointers are unused (may be null) when their variant is off
// ---------------------------------------------------------------------------
template <class L, WeightDecay WD, AmsGrad A>
FT_HD void adam_element(typename L::param_t* p, const typename L::grad_t* g, float* master,
                        typename L::state_t* m, typename L::state_t* v,
                        typename L::state_t* vmax, int64_t i,
                        const AdamScalars<typename L::T>& s, const RoundCtx& rc) {
  using T = typename L::T;
  T pi = load_param<L>(p, master, i);
  T mi = widen(m[i]), vi = widen(v[i]);
  T vmi = T(0);
  if constexpr (A == AmsGrad::On) vmi = widen(vmax[i]);
  adam_update<WD, A>(pi, T(widen(g[i])), mi, vi, vmi, s);
  store_param<L>(p, master, i, pi, rc);
  narrow(m[i], mi);
  narrow(v[i], vi);
  if constexpr (A == AmsGrad::On) narrow(vmax[i], vmi);
}

// Momentum::First writes the buffer without reading it.
template <class L, Momentum M, Nesterov N>
FT_HD void sgd_element(typename L::param_t* p, const typename L::grad_t* g, float* master,
                       typename L::state_t* buf, int64_t i, const SgdScalars<typename L::T>& s,
                       const RoundCtx& rc) {
  using T = typename L::T;
  T pi = load_param<L>(p, master, i);
  T bi = T(0);
  if constexpr (M == Momentum::On) bi = widen(buf[i]);
  sgd_update<M, N>(pi, T(widen(g[i])), bi, s);
  store_param<L>(p, master, i, pi, rc);
  if constexpr (M != Momentum::Off) narrow(buf[i], bi);
}

template <class L, Centered C, Momentum M>
FT_HD void rmsprop_element(typename L::param_t* p, const typename L::grad_t* g, float* master,
                           typename L::state_t* sq, typename L::state_t* ga,
                           typename L::state_t* buf, int64_t i,
                           const RmspropScalars<typename L::T>& s, const RoundCtx& rc) {
  using T = typename L::T;
  T pi = load_param<L>(p, master, i);
  T si = widen(sq[i]);
  T gai = T(0), bi = T(0);
  if constexpr (C == Centered::On) gai = widen(ga[i]);
  if constexpr (M == Momentum::On) bi = widen(buf[i]);
  rmsprop_update<C, M>(pi, T(widen(g[i])), si, gai, bi, s);
  store_param<L>(p, master, i, pi, rc);
  narrow(sq[i], si);
  if constexpr (C == Centered::On) narrow(ga[i], gai);
  if constexpr (M == Momentum::On) narrow(buf[i], bi);
}

template <class L>
FT_HD void adagrad_element(typename L::param_t* p, const typename L::grad_t* g, float* master,
                           typename L::state_t* sum, int64_t i,
                           const AdagradScalars<typename L::T>& s, const RoundCtx& rc) {
  using T = typename L::T;
  T pi = load_param<L>(p, master, i);
  T si = widen(sum[i]);
  adagrad_update(pi, T(widen(g[i])), si, s);
  store_param<L>(p, master, i, pi, rc);
  narrow(sum[i], si);
}

}  // namespace fusedtrain

// Per-element update of every optimizer, written once for the CPU loops and
// the CUDA kernels (FT_HD). Each function updates one element of the
// parameter and of each state buffer in registers; the caller loads and
// stores. The order of floating-point operations follows torch.optim's
// single-tensor implementations, so results agree with it to rounding.
//
// Per-step scalars (bias corrections, lr * weight_decay, ...) arrive ready to
// use in the *Scalars structs: they are computed once per call on the host in
// double (make_*_scalars below) and cast to the compute type T.
#pragma once

#include <cstdint>

#include "fusedtrain/hd.h"

namespace fusedtrain {

// ---------------------------------------------------------------------------
// variant flags: template parameters, so the inner loop carries no switch
// ---------------------------------------------------------------------------
enum class WeightDecay { L2, Decoupled };  // Adam adds wd * p to the gradient; AdamW scales p
enum class AmsGrad { Off, On };
enum class Momentum { Off, On, First };  // First: the buffer is set to d (step 1)
enum class Nesterov { Off, On };
enum class Centered { Off, On };

// The gradient the update sees: unscaled and sign-flipped by one multiply
// (grad_mult = +-1 / grad_scale, - for maximize), L2 term, L1 term. l2 and
// l1 are zero when unused; the selects keep the
// gradient bit-exact then. (Flags are numbers, not bools, in the scalar
// structs: a bool select inside the loop stops GCC from vectorising it.)
template <typename T>
FT_HD T effective_grad(T g, T p, T grad_mult, T l2, T l1) {
  g = g * grad_mult;
  g = l2 != T(0) ? g + l2 * p : g;
  g = l1 != T(0) ? g + l1 * ft_sign(p) : g;
  return g;
}

// ---------------------------------------------------------------------------
// SGD (momentum, dampening, Nesterov)
//   d = g (+ wd p) (+ l1 sign p)
//   buf = d on the first step, else momentum * buf + (1 - dampening) * d
//   d = d + momentum * buf (Nesterov) or buf
//   p = p - lr * d
// ---------------------------------------------------------------------------
template <typename T>
struct SgdScalars {
  T neg_lr, momentum, one_minus_dampening, weight_decay, l1, grad_mult;
};

template <Momentum M, Nesterov N, typename T>
FT_HD void sgd_update(T& p, T g, T& buf, const SgdScalars<T>& s) {
  T d = effective_grad(g, p, s.grad_mult, s.weight_decay, s.l1);
  if constexpr (M != Momentum::Off) {
    buf = M == Momentum::First ? d : buf * s.momentum + s.one_minus_dampening * d;
    if constexpr (N == Nesterov::On) {
      d = d + s.momentum * buf;
    } else {
      d = buf;
    }
  }
  p = p + s.neg_lr * d;
}

// ---------------------------------------------------------------------------
// Adam / AdamW (AMSGrad)
//   AdamW: p = p * (1 - lr wd);  Adam: g = g + wd p
//   m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2
//   vmax = max(vmax, v) (AMSGrad), used in place of v below
//   p = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// ---------------------------------------------------------------------------
template <typename T>
struct AdamScalars {
  T one_minus_beta1, beta2, one_minus_beta2, eps;
  T l2;            // weight_decay for Adam, 0 for AdamW
  T decay_factor;  // 1 - lr * weight_decay for AdamW, 1 for Adam
  T neg_step_size; // -lr / (1 - beta1^t)
  T bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  T l1, grad_mult;
};

template <WeightDecay WD, AmsGrad A, typename T>
FT_HD void adam_update(T& p, T g, T& m, T& v, T& vmax, const AdamScalars<T>& s) {
  g = effective_grad(g, p, s.grad_mult, s.l2, s.l1);
  if constexpr (WD == WeightDecay::Decoupled) p = p * s.decay_factor;
  m = ft_lerp(m, g, s.one_minus_beta1);
  v = v * s.beta2 + s.one_minus_beta2 * g * g;
  T second = v;
  if constexpr (A == AmsGrad::On) {
    vmax = ft_max(vmax, v);
    second = vmax;
  }
  const T denom = ft_sqrt(second) / s.bias_correction2_sqrt + s.eps;
  p = p + s.neg_step_size * m / denom;
}

// ---------------------------------------------------------------------------
// RMSProp (centered, momentum)
//   sq = alpha sq + (1 - alpha) g^2
//   centered: ga = lerp(ga, g, 1 - alpha); avg = sqrt(sq - ga^2) + eps
//   else: avg = sqrt(sq) + eps
//   momentum: buf = momentum buf + g / avg; p = p - lr buf
//   else: p = p - lr g / avg
// ---------------------------------------------------------------------------
template <typename T>
struct RmspropScalars {
  T neg_lr, alpha, one_minus_alpha, eps, momentum, weight_decay, l1, grad_mult;
};

template <Centered C, Momentum M, typename T>
FT_HD void rmsprop_update(T& p, T g, T& square_avg, T& grad_avg, T& buf,
                          const RmspropScalars<T>& s) {
  g = effective_grad(g, p, s.grad_mult, s.weight_decay, s.l1);
  square_avg = square_avg * s.alpha + s.one_minus_alpha * g * g;
  T avg;
  if constexpr (C == Centered::On) {
    grad_avg = ft_lerp(grad_avg, g, s.one_minus_alpha);
    avg = ft_sqrt(square_avg + T(-1) * grad_avg * grad_avg);
  } else {
    avg = ft_sqrt(square_avg);
  }
  avg = avg + s.eps;
  if constexpr (M == Momentum::On) {
    buf = buf * s.momentum + g / avg;
    p = p + s.neg_lr * buf;
  } else {
    p = p + s.neg_lr * g / avg;
  }
}

// ---------------------------------------------------------------------------
// Adagrad
//   sum = sum + g^2;  p = p - clr g / (sqrt(sum) + eps),
//   clr = lr / (1 + (t - 1) lr_decay)
// ---------------------------------------------------------------------------
template <typename T>
struct AdagradScalars {
  T neg_clr, eps, weight_decay, l1, grad_mult;
};

template <typename T>
FT_HD void adagrad_update(T& p, T g, T& sum, const AdagradScalars<T>& s) {
  g = effective_grad(g, p, s.grad_mult, s.weight_decay, s.l1);
  sum = sum + g * g;
  const T std_ = ft_sqrt(sum) + s.eps;
  p = p + s.neg_clr * g / std_;
}

// ---------------------------------------------------------------------------
// Host-side per-step scalars, computed in double and cast once.
// ---------------------------------------------------------------------------
// grad_scale: the gradients arrive multiplied by it (loss scaling); the
// kernels multiply them by the reciprocal 1 / grad_scale, computed here in
// double and rounded once to the compute type (exact for the powers of two a
// dynamic loss scaler uses), folded with maximize's sign into grad_mult.
struct AdamHyper {
  double lr, beta1, beta2, eps, weight_decay, l1;
  bool amsgrad, decoupled, maximize;
  double grad_scale = 1.0;
};
struct SgdHyper {
  double lr, momentum, dampening, weight_decay, l1;
  bool nesterov, maximize;
  double grad_scale = 1.0;
};
struct RmspropHyper {
  double lr, alpha, eps, weight_decay, momentum, l1;
  bool centered, maximize;
  double grad_scale = 1.0;
};
struct AdagradHyper {
  double lr, lr_decay, weight_decay, eps, l1;
  bool maximize;
  double grad_scale = 1.0;
};

// +-1 / grad_scale in double (- for maximize), rounded once by the caller.
inline double grad_multiplier(bool maximize, double grad_scale) {
  const double inv = 1.0 / grad_scale;
  return maximize ? -inv : inv;
}

// ---------------------------------------------------------------------------
// Which variant a call runs: the run-time flags become template parameters
// here, once, for the CPU drivers and the CUDA launchers alike. f receives a
// tag type carrying the variant as static members.
// ---------------------------------------------------------------------------
template <WeightDecay W, AmsGrad A>
struct AdamVariant {
  static constexpr WeightDecay kWeightDecay = W;
  static constexpr AmsGrad kAmsGrad = A;
};

template <class F>
void with_adam_variant(const AdamHyper& h, F&& f) {
  using WD = WeightDecay;
  using A = AmsGrad;
  if (h.decoupled) {
    h.amsgrad ? f(AdamVariant<WD::Decoupled, A::On>{}) : f(AdamVariant<WD::Decoupled, A::Off>{});
  } else {
    h.amsgrad ? f(AdamVariant<WD::L2, A::On>{}) : f(AdamVariant<WD::L2, A::Off>{});
  }
}

template <Momentum M, Nesterov N>
struct SgdVariant {
  static constexpr Momentum kMomentum = M;
  static constexpr Nesterov kNesterov = N;
};

// torch initialises the momentum buffer to d on the first step: Momentum::First.
template <class F>
void with_sgd_variant(const SgdHyper& h, int64_t step, F&& f) {
  using M = Momentum;
  using N = Nesterov;
  if (h.momentum == 0.0) {
    f(SgdVariant<M::Off, N::Off>{});
  } else if (step <= 1) {
    h.nesterov ? f(SgdVariant<M::First, N::On>{}) : f(SgdVariant<M::First, N::Off>{});
  } else {
    h.nesterov ? f(SgdVariant<M::On, N::On>{}) : f(SgdVariant<M::On, N::Off>{});
  }
}

template <Centered C, Momentum M>
struct RmspropVariant {
  static constexpr Centered kCentered = C;
  static constexpr Momentum kMomentum = M;
};

template <class F>
void with_rmsprop_variant(const RmspropHyper& h, F&& f) {
  using C = Centered;
  using M = Momentum;
  const bool mom = h.momentum > 0.0;
  if (h.centered) {
    mom ? f(RmspropVariant<C::On, M::On>{}) : f(RmspropVariant<C::On, M::Off>{});
  } else {
    mom ? f(RmspropVariant<C::Off, M::On>{}) : f(RmspropVariant<C::Off, M::Off>{});
  }
}

template <typename T>
AdamScalars<T> make_adam_scalars(const AdamHyper& h, int64_t step) {
  const double bc1 = 1.0 - std::pow(h.beta1, double(step));
  const double bc2 = 1.0 - std::pow(h.beta2, double(step));
  AdamScalars<T> s;
  s.one_minus_beta1 = T(1.0 - h.beta1);
  s.beta2 = T(h.beta2);
  s.one_minus_beta2 = T(1.0 - h.beta2);
  s.eps = T(h.eps);
  s.l2 = h.decoupled ? T(0) : T(h.weight_decay);
  s.decay_factor = h.decoupled ? T(1.0 - h.lr * h.weight_decay) : T(1);
  s.neg_step_size = T(-(h.lr / bc1));
  s.bias_correction2_sqrt = T(std::sqrt(bc2));
  s.l1 = T(h.l1);
  s.grad_mult = T(grad_multiplier(h.maximize, h.grad_scale));
  return s;
}

template <typename T>
SgdScalars<T> make_sgd_scalars(const SgdHyper& h) {
  SgdScalars<T> s;
  s.neg_lr = T(-h.lr);
  s.momentum = T(h.momentum);
  s.one_minus_dampening = T(1.0 - h.dampening);
  s.weight_decay = T(h.weight_decay);
  s.l1 = T(h.l1);
  s.grad_mult = T(grad_multiplier(h.maximize, h.grad_scale));
  return s;
}

template <typename T>
RmspropScalars<T> make_rmsprop_scalars(const RmspropHyper& h) {
  RmspropScalars<T> s;
  s.neg_lr = T(-h.lr);
  s.alpha = T(h.alpha);
  s.one_minus_alpha = T(1.0 - h.alpha);
  s.eps = T(h.eps);
  s.momentum = T(h.momentum);
  s.weight_decay = T(h.weight_decay);
  s.l1 = T(h.l1);
  s.grad_mult = T(grad_multiplier(h.maximize, h.grad_scale));
  return s;
}

template <typename T>
AdagradScalars<T> make_adagrad_scalars(const AdagradHyper& h, int64_t step) {
  AdagradScalars<T> s;
  s.neg_clr = T(-(h.lr / (1.0 + double(step - 1) * h.lr_decay)));
  s.eps = T(h.eps);
  s.weight_decay = T(h.weight_decay);
  s.l1 = T(h.l1);
  s.grad_mult = T(grad_multiplier(h.maximize, h.grad_scale));
  return s;
}

}  // namespace fusedtrain

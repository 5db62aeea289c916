// Gradient clipping, written once for the CPU loops (cpu/norm_cpu.cpp) and the
// CUDA kernels (cuda/norm_cuda.cu): the per-element terms of a vector norm,
// the fixed blocking of its reduction, the clip coefficient and the clamp.
//
// The global norm of a list of tensors is one reduction in float64 whose
// order is fixed by the constants below, never by the number of threads or
// thread blocks:
//
//   1. Each tensor is cut into norm blocks of kNormBlock elements (the last
//      one shorter), counted from the tensor's first element.
//   2. Inside a block, element j goes to lane j % kNormLanes; each lane adds
//      its terms in element order; the lanes are then folded by halving
//      (lane l += lane l + w for w = kNormLanes/2, ..., 1). Result: one
//      partial per block.
//   3. The partials of all blocks, numbered tensor by tensor, are folded the
//      same way with kFinalLanes lanes: partial b goes to lane b % kFinalLanes,
//      then halving.
//
// The CPU runs step 2 with SIMD over the lanes and step 3 on one thread; the
// GPU runs step 2 with one thread per lane (the halving is a warp shuffle)
// and step 3 in one thread block. With no contraction on either side the two
// agree bit for bit for norm types 1, 2 and inf (|x| and x*x in double are
// exact or correctly rounded; a general p calls pow, which libm and CUDA may
// round differently in the last place).
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fusedtrain/hd.h"

namespace fusedtrain {

constexpr int64_t kNormBlock = 2048;  // elements per partial
constexpr int kNormLanes = 16;        // accumulators per block (a divisor of 32: one warp)
constexpr int kFinalLanes = 512;      // accumulators of the final fold (one thread block)
static_assert(kNormBlock % kNormLanes == 0, "a block is a whole number of lane rounds");
static_assert((kNormLanes & (kNormLanes - 1)) == 0 && 32 % kNormLanes == 0,
              "halving needs a power of two that divides a warp");
static_assert((kFinalLanes & (kFinalLanes - 1)) == 0, "halving needs a power of two");

// Norm types: L2 (the default), L1, Inf (max |x|) and any other finite p > 0.
enum class NormKind { L2, L1, Inf, P };

FT_HD double ft_abs(double x) { return fabs(x); }
FT_HD double ft_pow(double x, double y) { return pow(x, y); }

// The term element x adds to its lane: x^2, |x|, |x| or |x|^p, in double.
template <NormKind K>
FT_HD double norm_term(double x, double p) {
  if constexpr (K == NormKind::L2) return x * x;
  if constexpr (K == NormKind::L1 || K == NormKind::Inf) return ft_abs(x);
  if constexpr (K == NormKind::P) return ft_pow(ft_abs(x), p);
  return 0.0;
}

// How two accumulators combine: a sum, or for Inf a maximum that keeps NaN
// (a NaN gradient makes the norm NaN, as torch.linalg.vector_norm).
template <NormKind K>
FT_HD double norm_combine(double a, double b) {
  if constexpr (K == NormKind::Inf) return ft_max(a, b);
  return a + b;
}

// The norm from the folded accumulator: sqrt, identity, or the 1/p-th power.
template <NormKind K>
FT_HD double norm_finish(double acc, double p) {
  if constexpr (K == NormKind::L2) return sqrt(acc);
  if constexpr (K == NormKind::P) return ft_pow(acc, 1.0 / p);
  return acc;
}

// Folds lanes[0..n) into lanes[0] by halving (n a power of two): the order
// of step 2 and step 3 above.
template <NormKind K>
FT_HD double fold_lanes(double* lanes, int n) {
  for (int w = n / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) lanes[l] = norm_combine<K>(lanes[l], lanes[l + w]);
  return lanes[0];
}

// torch.nn.utils.clip_grad_norm_'s coefficient, in the gradients' dtype T as
// torch computes it: min(max_norm * (1 / (total + 1e-6)), 1), NaN kept (a NaN
// norm gives a NaN coefficient, an infinite one gives 0).
template <typename T>
FT_HD T clip_coef(double total_norm, double max_norm) {
  const T denom = T(total_norm) + T(1e-6);
  const T coef = (T(1) / denom) * T(max_norm);
  return coef > T(1) ? T(1) : coef;  // NaN compares false and stays
}

// clip_grad_value_: x clamped to [lo, hi]; NaN stays NaN (as torch.clamp).
template <typename T>
FT_HD T clamp_value(T x, T lo, T hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// ---------------------------------------------------------------------------
// Host side: which NormKind a norm type is, chosen once per call for the CPU
// driver and the CUDA launcher alike. f receives a tag carrying the kind.
// ---------------------------------------------------------------------------
template <NormKind K>
struct NormVariant {
  static constexpr NormKind kKind = K;
};

// 2 -> L2, 1 -> L1, +inf -> Inf, any other finite p > 0 -> P. Throws
// std::invalid_argument (ValueError) for p <= 0 or NaN.
inline NormKind norm_kind(double p) {
  if (!(p > 0.0))
    throw std::invalid_argument("norm_type: expected a number > 0 or inf, received " +
                                std::to_string(p));
  if (p == 2.0) return NormKind::L2;
  if (p == 1.0) return NormKind::L1;
  if (std::isinf(p)) return NormKind::Inf;
  return NormKind::P;
}

template <class F>
decltype(auto) with_norm_kind(double p, F&& f) {
  switch (norm_kind(p)) {
    case NormKind::L2: return f(NormVariant<NormKind::L2>{});
    case NormKind::L1: return f(NormVariant<NormKind::L1>{});
    case NormKind::Inf: return f(NormVariant<NormKind::Inf>{});
    default: return f(NormVariant<NormKind::P>{});
  }
}

}  // namespace fusedtrain

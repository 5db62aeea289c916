// Activations and their derivatives, per element, for the CPU loops and the
// CUDA kernels (FT_HD). Formulas follow torch.nn.functional.
//
// The backward of each activation reads what the forward saved: the output y
// for relu, leaky_relu (slope >= 0), sigmoid and tanh (their derivatives are
// functions of y), the pre-activation z for gelu. Softmax is row-wise and
// lives in the dense loops; its per-row pieces are below.
#pragma once

#include "fusedtrain/hd.h"

namespace fusedtrain {

enum class Act { Identity, Relu, LeakyRelu, Sigmoid, Tanh, GeluErf, GeluTanh, Softmax };

// What the backward pass needs from the forward.
enum class Saved { Nothing, Output, PreActivation };

constexpr Saved saved_of(Act a) {
  return a == Act::Identity ? Saved::Nothing
         : (a == Act::GeluErf || a == Act::GeluTanh) ? Saved::PreActivation
                                                      : Saved::Output;
}

namespace act_const {
constexpr double kInvSqrt2 = 0.70710678118654752440;     // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1 / sqrt(2 pi)
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kGeluCubic = 0.044715;
}  // namespace act_const

// y = act(z). `slope` is leaky_relu's negative slope (unused otherwise).
template <Act A, typename T>
FT_HD T act_forward(T z, T slope) {
  using namespace act_const;
  if constexpr (A == Act::Identity || A == Act::Softmax) {
    return z;  // softmax is applied row-wise by the caller
  } else if constexpr (A == Act::Relu) {
    return z < T(0) ? T(0) : z;  // NaN passes through
  } else if constexpr (A == Act::LeakyRelu) {
    return z < T(0) ? z * slope : z;
  } else if constexpr (A == Act::Sigmoid) {
    return T(1) / (T(1) + ft_exp(-z));
  } else if constexpr (A == Act::Tanh) {
    return ft_tanh(z);
  } else if constexpr (A == Act::GeluErf) {
    return T(0.5) * z * (T(1) + ft_erf(z * T(kInvSqrt2)));
  } else {  // GeluTanh
    const T inner = T(kSqrt2OverPi) * (z + T(kGeluCubic) * z * z * z);
    return T(0.5) * z * (T(1) + ft_tanh(inner));
  }
}

// dz = dy * act'(z), with `s` the saved value (y, or z for gelu).
template <Act A, typename T>
FT_HD T act_backward(T dy, T s, T slope) {
  using namespace act_const;
  if constexpr (A == Act::Identity || A == Act::Softmax) {
    return dy;  // softmax: see softmax_backward
  } else if constexpr (A == Act::Relu) {
    // a product, not a select: GCC sinks the load of dy into the branch of a
    // select with a constant arm and then cannot vectorise the loop
    return dy * T(s > T(0));
  } else if constexpr (A == Act::LeakyRelu) {
    return s > T(0) ? dy : dy * slope;
  } else if constexpr (A == Act::Sigmoid) {
    return dy * s * (T(1) - s);
  } else if constexpr (A == Act::Tanh) {
    return dy * (T(1) - s * s);
  } else if constexpr (A == Act::GeluErf) {
    const T cdf = T(0.5) * (T(1) + ft_erf(s * T(kInvSqrt2)));
    const T pdf = T(kInvSqrt2Pi) * ft_exp(T(-0.5) * s * s);
    return dy * (cdf + s * pdf);
  } else {  // GeluTanh
    const T s2 = s * s;
    const T t = ft_tanh(T(kSqrt2OverPi) * (s + T(kGeluCubic) * s2 * s));
    const T dinner = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCubic) * s2);
    return dy * (T(0.5) * (T(1) + t) + T(0.5) * s * (T(1) - t * t) * dinner);
  }
}

// Softmax of one row, given its max: y_j = exp(z_j - max) / sum.
// Backward of one row: dz_j = y_j * (dy_j - sum_k dy_k y_k).
template <typename T>
FT_HD T softmax_shifted_exp(T z, T row_max) {
  return ft_exp(z - row_max);
}

}  // namespace fusedtrain

// Per-element and per-row pieces of the losses (softmax cross-entropy, BCE
// with logits, MSE) and of dropout, written once for the CPU loops and the
// CUDA kernels (FT_HD). The caller loads, stores and reduces; these functions
// only compute.
//
// exp, log1p and log are written out here as branch-free polynomials
// (ft_exp_poly and its x <= 0 form ft_exp_nonpos, ft_log1p_poly, ft_log_poly)
// instead of calling libm (hd.h's
// ft_exp): GCC can then vectorise the loops that call them, across the
// elements of a row and across rows (a libm call stops it), and nvcc compiles
// the very same operations. Contraction is off on both sides
// (-ffp-contract=off, --fmad=false) and the fused multiply-adds of the exp
// are explicit (fmaf / fma, exact on both), so the CPU and the GPU round
// alike. Each is within 1-2 ulp of libm in the range the losses use (see each
// function).
//
// Softmax cross-entropy of one row x (C,) with label y, class weights w
// (w = 1 without weights), smoothing eps (torch.nn.functional.cross_entropy):
//
//   m = max_c x_c,  xs_c = x_c - m,  e_c = exp(xs_c),  S = sum_c e_c
//   loss = (1 - eps) w_y (log S - xs_y) + (eps / C) (W log S - sum_c w_c xs_c),
//          W = sum_c w_c
//   dloss/dx_c = ((1 - eps) w_y + eps W / C) e_c / S - (eps / C) w_c
//                - (1 - eps) w_y [c == y]
//
// and reduction "mean" divides loss and gradient by D = sum of w_y over the
// rows whose label is not ignore_index. Ignored rows have loss 0, gradient 0.
#pragma once

#include <cstdint>
#include <cstring>

#include "fusedtrain/hd.h"

namespace fusedtrain {

// ---------------------------------------------------------------------------
// device-safe helpers
// ---------------------------------------------------------------------------
// int32 clamp (integer min/max: no branch)
FT_HD int32_t ft_clamp_i32(int32_t v, int32_t lo, int32_t hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// c ? a : b on the bits. GCC turns a select whose arms are cheap or constant
// into a branch around the code that computes the other arm, and then cannot
// vectorise the loop for AVX2 (it can for AVX-512, with masks); a select on
// the bits keeps the loop straight.
FT_HD float ft_select(bool c, float a, float b) {
  const uint32_t m = 0u - uint32_t(c);
  return ft_as_float((ft_as_uint(a) & m) | (ft_as_uint(b) & ~m));
}
FT_HD double ft_select(bool c, double a, double b) {
  const uint64_t m = uint64_t(0) - uint64_t(c);
  return ft_as_double((ft_as_uint(a) & m) | (ft_as_uint(b) & ~m));
}

// a * b + c rounded once. Explicit, so still one defined operation with
// contraction off: the same bits from an FMA instruction, from libm's fmaf on
// a CPU without one (loss_cpu.cpp's baseline clone: correct but slow) and
// from CUDA's fmaf.
FT_HD float ft_fused_mul_add(float a, float b, float c) { return fmaf(a, b, c); }
FT_HD double ft_fused_mul_add(double a, double b, double c) { return fma(a, b, c); }

// The part of exp(x) both forms share: t = x log2 e + magic, whose low bits
// hold n = round(x log2 e), and exp(r) for r = x - n ln 2 (the polynomial).
FT_HD float ft_exp_reduced(float x, float& t) {
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  t = ft_fused_mul_add(x, 1.44269504088896341f, magic);
  const float n = t - magic;
  float r = ft_fused_mul_add(n, -0.693359375f, x);
  r = ft_fused_mul_add(n, 2.12194440e-4f, r);
  float p = 1.381461275741458e-3f;  // minimax for (exp(r) - 1 - r) / r^2
  p = ft_fused_mul_add(p, r, 8.368710055947304e-3f);
  p = ft_fused_mul_add(p, r, 4.166838899254799e-2f);
  p = ft_fused_mul_add(p, r, 1.666652113199234e-1f);
  p = ft_fused_mul_add(p, r, 4.999999403953552e-1f);
  return ft_fused_mul_add(p, r * r, r) + 1.0f;
}

FT_HD double ft_exp_reduced(double x, double& t) {
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  t = ft_fused_mul_add(x, 1.4426950408889634074, magic);
  const double n = t - magic;
  double r = ft_fused_mul_add(n, -6.93145751953125e-1, x);
  r = ft_fused_mul_add(n, -1.42860682030941723212e-6, r);
  const double rr = r * r;
  double px = 1.26177193074810590878e-4;
  px = ft_fused_mul_add(px, rr, 3.02994407707441961300e-2);
  px = ft_fused_mul_add(px, rr, 9.99999999999999999910e-1);
  px = px * r;
  double qx = 3.00198505138664455042e-6;
  qx = ft_fused_mul_add(qx, rr, 2.52448340349684104192e-3);
  qx = ft_fused_mul_add(qx, rr, 2.27265548208155028766e-1);
  qx = ft_fused_mul_add(qx, rr, 2.00000000000000000009e0);
  return 1.0 + 2.0 * (px / (qx - px));
}

// exp(x), branch-free (after Cephes expf / exp): n = round(x log2 e) by the
// 1.5 * 2^23 (2^52) trick, r = x - n ln 2 in two parts (Cody-Waite),
// exp(r) = 1 + r + r^2 P(r) with a degree-4 minimax P (float; fitted for
// this, 1.1e-7 relative on [-ln2/2, ln2/2]) or Cephes' Pade form (double),
// times 2^n (one exponent, n in the normal range). Within 1 ulp (float) /
// 2 ulp (double) of glibc's exp for x in [-87.33, 88.37] / [-708.39, 709.43].
// Beyond: 0 below (exp(x) < FLT_MIN / DBL_MIN: subnormal results flush to
// 0), inf above (from 127.5 ln 2 = 88.38 / 1023.5 ln 2 = 709.44, a little
// before exp really overflows at 88.72 / 709.78 -- the losses only take
// exp(x <= 0)); NaN gives NaN. The ends are set by bit masks: a select with
// a constant there would make GCC branch around the whole computation, which
// stops it vectorising the loop for AVX2.
FT_HD float ft_exp_poly(float x) {
  float t;
  const float p = ft_exp_reduced(x, t);
  const int32_t ni = ft_clamp_i32(int32_t(ft_as_uint(t) - ft_as_uint(12582912.0f)), -126, 127);
  const float e = p * ft_as_float(uint32_t(ni + 127) << 23);
  const uint32_t zero = 0u - uint32_t(x < -87.33654f);  // exp(x) < FLT_MIN
  const uint32_t inf = 0u - uint32_t(x > 88.37626f);    // n would be 128
  return ft_as_float(((ft_as_uint(e) & ~zero) & ~inf) | (0x7F800000u & inf));
}

FT_HD double ft_exp_poly(double x) {
  double t;
  const double p = ft_exp_reduced(x, t);
  const int32_t ni = ft_clamp_i32(
      int32_t(uint32_t(ft_as_uint(t) - ft_as_uint(6755399441055744.0))), -1022, 1023);
  const double e = p * ft_as_double(uint64_t(ni + 1023) << 52);
  const uint64_t zero = uint64_t(0) - uint64_t(x < -708.3964185322641);  // < DBL_MIN
  const uint64_t inf = uint64_t(0) - uint64_t(x > 709.436139303104);     // n would be 1024
  return ft_as_double(((ft_as_uint(e) & ~zero) & ~inf) | (uint64_t(0x7FF0000000000000) & inf));
}

// exp(x) for x <= 0 or NaN (the exponentials of the losses: x - max, -|x|),
// bit for bit ft_exp_poly(x) there, with fewer operations: no overflow end
// and no clamp of the exponent (n = round(x log2 e) is in [-126, 0] wherever
// the result is not set to 0; below, the garbage is masked away, computed
// in unsigned arithmetic).
FT_HD float ft_exp_nonpos(float x) {
  float t;
  const float p = ft_exp_reduced(x, t);
  const uint32_t biased = ft_as_uint(t) - ft_as_uint(12582912.0f) + 127u;  // n + 127
  const float e = p * ft_as_float(biased << 23);
  const uint32_t zero = 0u - uint32_t(x < -87.33654f);
  return ft_as_float(ft_as_uint(e) & ~zero);
}

FT_HD double ft_exp_nonpos(double x) {
  double t;
  const double p = ft_exp_reduced(x, t);
  const uint64_t biased = ft_as_uint(t) - ft_as_uint(6755399441055744.0) + uint64_t(1023);
  const double e = p * ft_as_double(biased << 52);
  const uint64_t zero = uint64_t(0) - uint64_t(x < -708.3964185322641);
  return ft_as_double(ft_as_uint(e) & ~zero);
}

// 2 atanh(s) = log((1 + s) / (1 - s)) for |s| <= 0.172, by its series
// 2 s (1 + s^2 / 3 + s^4 / 5 + ...) (truncated below 1e-17 relative).
FT_HD double ft_log_atanh_series(double s) {
  const double z = s * s;
  double q = 1.0 / 21;
  q = q * z + 1.0 / 19;
  q = q * z + 1.0 / 17;
  q = q * z + 1.0 / 15;
  q = q * z + 1.0 / 13;
  q = q * z + 1.0 / 11;
  q = q * z + 1.0 / 9;
  q = q * z + 1.0 / 7;
  q = q * z + 1.0 / 5;
  q = q * z + 1.0 / 3;
  return 2.0 * s + 2.0 * s * (z * q);
}

// ln 2 = kLn2Hi + kLn2Lo, kLn2Hi with few bits so that k * kLn2Hi is exact
constexpr double kLn2Hi = 6.93147180369123816490e-01;
constexpr double kLn2Lo = 1.90821492927058770002e-10;

// log(1 + u) for u in [-0.29, 1] (what softplus needs: u = exp(-|x|)), NaN
// propagating. 1 + u is brought into [sqrt(2)/2, sqrt(2)] by halving when
// u > sqrt(2) - 1 (k = 1); then log1p(f) = 2 atanh(s), s = f / (2 + f).
FT_HD double ft_log1p_poly(double u) {
  const bool big = u > 0.41421356237309504880;
  const double f = ft_select(big, (u - 1.0) * 0.5, u);
  const double l = ft_log_atanh_series(f / (2.0 + f));
  return ft_select(big, kLn2Hi + (l + kLn2Lo), l);
}

// float: the series to s^10 (truncation below 2e-9), ln 2 split for float
FT_HD float ft_log1p_poly(float u) {
  const bool big = u > 0.414213562f;
  const float f = ft_select(big, (u - 1.0f) * 0.5f, u);
  const float s = f / (2.0f + f);
  const float z = s * s;
  float q = 1.0f / 11;
  q = q * z + 1.0f / 9;
  q = q * z + 1.0f / 7;
  q = q * z + 1.0f / 5;
  q = q * z + 1.0f / 3;
  const float l = 2.0f * s + 2.0f * s * (z * q);
  return ft_select(big, 0.693145752f + (l + 1.42860677e-6f), l);
}

// log(x) for a normal positive x, +inf or NaN (what log-sum-exp needs: x is a
// sum of exponentials >= 1): x = 2^e f with f in [sqrt(2)/2, sqrt(2)),
// log x = e ln 2 + 2 atanh((f - 1) / (f + 1)). Selects are bit masks and the
// exponent an int32, so that GCC vectorises a loop of them for AVX2 too.
FT_HD double ft_log_poly(double x) {
  const uint64_t bits = ft_as_uint(x);
  const uint64_t mant = bits & uint64_t(0x000FFFFFFFFFFFFF);
  // high: f > sqrt(2) with the exponent of 1.0; then use f / 2 (exponent of 0.5)
  const bool above = int64_t(mant) > int64_t(0x6A09E667F3BCC);
  const uint64_t high = uint64_t(0) - uint64_t(above);
  const double f = ft_as_double(mant | (uint64_t(0x3FF0000000000000) ^
                                        (high & uint64_t(0x0010000000000000))));
  const int32_t biased = int32_t(uint32_t(bits >> 52) & 0x7FFu);
  const double e = double(biased - 1023 + int32_t(above));
  const double l = e * kLn2Hi + (ft_log_atanh_series((f - 1.0) / (f + 1.0)) + e * kLn2Lo);
  // x itself for +inf and NaN (exponent all ones)
  const uint64_t special = uint64_t(0) - uint64_t(biased == 0x7FF);
  return ft_as_double((ft_as_uint(l) & ~special) | (bits & special));
}

// ---------------------------------------------------------------------------
// softmax cross-entropy
// ---------------------------------------------------------------------------
enum class Smoothing { Off, On };
enum class ClassWeights { Off, On };
enum class Reduction { None, Sum, Mean };

// Per-call scalars, computed once on the host in double.
struct CeScalars {
  double one_minus_eps;  // 1 - label_smoothing
  double eps_over_c;     // label_smoothing / C
  double weight_total;   // W = sum_c w_c (C without weights)
  double scale;          // 1 / D for "mean", 1 otherwise
};

FT_HD CeScalars make_ce_scalars(double label_smoothing, int64_t n_classes, double weight_total,
                                 Reduction r, double denom) {
  CeScalars s;
  s.one_minus_eps = 1.0 - label_smoothing;
  s.eps_over_c = label_smoothing / double(n_classes);
  s.weight_total = weight_total;
  s.scale = r == Reduction::Mean ? 1.0 / denom : 1.0;
  return s;
}

// What one row needs for its gradient, g_c = e_c * coef_e - coef_w * w_c,
// then g_y -= coef_y; and the row's loss (unscaled; the reduction divides).
template <typename T>
struct CeRow {
  double loss;
  T coef_e, coef_w, coef_y;
};

// From the row's reductions: sum_exp = S, log_s = log S, xs_label = xs_y,
// wxs_sum = sum_c w_c xs_c (used with smoothing only), w_label = w_y.
template <typename T>
FT_HD CeRow<T> ce_row(double sum_exp, double log_s, T xs_label, double wxs_sum, double w_label,
                      const CeScalars& s) {
  CeRow<T> r;
  const double hard = s.one_minus_eps * w_label;
  r.loss = hard * (log_s - double(xs_label));
  r.loss += s.eps_over_c * (s.weight_total * log_s - wxs_sum);
  r.coef_e = T((hard + s.eps_over_c * s.weight_total) * s.scale / sum_exp);
  r.coef_w = T(s.eps_over_c * s.scale);
  r.coef_y = T(hard * s.scale);
  return r;
}

// One gradient element from e_c = exp(xs_c) and the class weight w_c
// (coef_e, coef_w from the row's CeRow).
template <Smoothing SM, typename T>
FT_HD T ce_grad(T e, T w, T coef_e, T coef_w) {
  if constexpr (SM == Smoothing::On) {
    return e * coef_e - coef_w * w;
  } else {
    return e * coef_e;
  }
}

// ---------------------------------------------------------------------------
// binary cross-entropy with logits (numerically stable form)
//   loss = max(x, 0) - x t + log1p(exp(-|x|))
//   dloss/dx = sigmoid(x) - t, sigmoid(x) = 1 / (1 + e) (x >= 0) or e / (1 + e),
//   e = exp(-|x|)
// NaN in x or t reaches both through x * t and e.
// ---------------------------------------------------------------------------
template <typename T>
FT_HD void bce_with_logits_elem(T x, T t, T scale, T& loss, T& grad) {
  const bool neg = x < T(0);
  const T e = ft_exp_nonpos(ft_select(neg, x, -x));  // exp(-|x|)
  const T relu = ft_select(neg, T(0), x);          // NaN stays NaN
  loss = relu - x * t + ft_log1p_poly(e);
  const T r = T(1) / (T(1) + e);
  const T sig = ft_select(neg, e * r, r);
  grad = (sig - t) * scale;
}

// ---------------------------------------------------------------------------
// mean squared error: loss = (p - t)^2, dloss/dp = 2 (p - t) (scale = 2 or 2 / n)
// ---------------------------------------------------------------------------
template <typename T>
FT_HD void mse_elem(T p, T t, T scale, T& loss, T& grad) {
  const T d = p - t;
  loss = d * d;
  grad = scale * d;
}

// ---------------------------------------------------------------------------
// the element-wise losses by kind, for the loops that run either (CPU blocks,
// CUDA kernels)
// ---------------------------------------------------------------------------
enum class Elementwise { Bce, Mse };

template <Elementwise K, typename T>
FT_HD void elementwise_loss(T a, T b, T scale, T& loss, T& grad) {
  if constexpr (K == Elementwise::Bce) {
    bce_with_logits_elem(a, b, scale, loss, grad);
  } else {
    mse_elem(a, b, scale, loss, grad);
  }
}

// Gradient scale of an element-wise loss: 1 (BCE) or 2 (MSE), divided by n
// for "mean"; computed in double, rounded once to T.
template <Elementwise K, typename T>
inline T elementwise_grad_scale(Reduction r, int64_t n) {
  const double base = K == Elementwise::Bce ? 1.0 : 2.0;
  return T(r == Reduction::Mean ? base / double(n) : base);
}

// ---------------------------------------------------------------------------
// dropout: y = x * (keep ? 1 / (1 - p) : 0); scale = 1 / (1 - p) rounded once
// (as torch); a dropped NaN or inf stays NaN, as x * 0 does in torch.
// ---------------------------------------------------------------------------
template <typename T>
FT_HD T dropout_apply(T x, bool keep, T scale) {
  return x * (keep ? scale : T(0));
}

}  // namespace fusedtrain

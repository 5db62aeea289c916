// Batch and layer normalization, per element and per statistic, for the CPU
// loops (cpu/normalize_cpu.cpp) and the CUDA kernels (cuda/normalize_cuda.cu). Formulas
// follow torch.nn.functional.batch_norm / layer_norm.
//
// Statistics are accumulated in double by the caller in two passes (the mean,
// then the centred sum of squares), never as E[x^2] - E[x]^2, so a large mean
// does not cancel the variance away. What is per element runs in the array's
// dtype T with the per-column (batch norm) or per-row (layer norm) scalars
// rounded to T once.
#pragma once

#include <cstdint>

#include "fusedtrain/act_math.h"
#include "fusedtrain/hd.h"

namespace fusedtrain {

// The fixed row blocks of a (B, C) column reduction, shared by the CPU loops
// and the CUDA kernels so that both add the same partial sums in the same
// order: about kNormBlockElems elements each, at most kNormMaxBlocks blocks, a
// function of the shape only (never of the thread count or the device).
constexpr int64_t kNormBlockElems = 16384;
constexpr int64_t kNormMaxBlocks = 64;

struct NormRowBlocks {
  int64_t B = 0, rows = 1, count = 0;
  FT_HD NormRowBlocks(int64_t B_, int64_t C) : B(B_) {
    if (B <= 0) return;
    int64_t want = B * (C > 1 ? C : 1) / kNormBlockElems;
    if (want < 1) want = 1;
    int64_t n = want < kNormMaxBlocks ? want : kNormMaxBlocks;
    if (n > B) n = B;
    rows = (B + n - 1) / n;
    count = (B + rows - 1) / rows;
  }
  FT_HD int64_t begin(int64_t k) const { return k * rows < B ? k * rows : B; }
  FT_HD int64_t end(int64_t k) const { return (k + 1) * rows < B ? (k + 1) * rows : B; }
};

// 1 / sqrt(var + eps), in double (var is the biased variance).
FT_HD double norm_rstd(double var, double eps) { return 1.0 / ft_sqrt(var + eps); }

// torch's running-statistic update: (1 - momentum) old + momentum batch, in
// double. The running variance takes the unbiased batch variance
// (var_biased * n / (n - 1)).
FT_HD double norm_running_update(double old, double batch, double momentum) {
  return (1.0 - momentum) * old + momentum * batch;
}
FT_HD double norm_unbiased(double var_biased, double n) {
  return var_biased * n / (n - 1.0);
}

// The mean (a double) is carried in T as a pair hi + lo (hi = T(mean), lo =
// T(mean - hi)) and subtracted in two steps: x - hi is exact when x is within
// a factor 2 of the mean (Sterbenz), so a float32 x around 1e4 with a spread
// of 1e-2 keeps float32 accuracy in x - mean instead of losing the mean's
// rounding error (half an ulp of 1e4, 5e-4) to it.
template <typename T>
FT_HD T norm_centre(T x, T mean_hi, T mean_lo) {
  return (x - mean_hi) - mean_lo;
}

// x normalised: (x - mean) * rstd.
template <typename T>
FT_HD T norm_xhat(T x, T mean_hi, T mean_lo, T rstd) {
  return norm_centre(x, mean_hi, mean_lo) * rstd;
}

// The affine pre-activation z = (x - mean) * scale + shift, with scale =
// weight * rstd and shift = bias (scale = rstd, shift = 0 without affine);
// the caller applies y = act(z).
template <typename T>
FT_HD T norm_affine(T x, T mean_hi, T mean_lo, T scale, T shift) {
  return norm_centre(x, mean_hi, mean_lo) * scale + shift;
}

// Batch-norm input gradient of one element, training mode:
//   dx = w rstd (dz - mean(dz) - xhat mean(dz xhat))
// with a = w * rstd, mdz = sum(dz) / B and mdzx = sum(dz xhat) / B per column
// (dz the gradient after the activation's derivative).
template <typename T>
FT_HD T bn_backward_elem(T dz, T xhat, T a, T mdz, T mdzx) {
  return a * (dz - mdz - xhat * mdzx);
}

// Layer-norm input gradient of one element:
//   dx = rstd (g - mean(g) - xhat mean(g xhat)),  g = dy * w
// with mg = sum(g) / C and mgx = sum(g xhat) / C per row.
template <typename T>
FT_HD T ln_backward_elem(T g, T xhat, T rstd, T mg, T mgx) {
  return rstd * (g - mg - xhat * mgx);
}

}  // namespace fusedtrain

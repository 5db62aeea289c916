// CPU entry points of the loss and dropout kernels. Arrays are validated by
// the binding (bind/loss_bind.cpp); these only run the loops.
//
// Reductions ("mean", "sum") are deterministic for any thread count: per-row
// (cross-entropy) or per-element losses are summed in double within fixed
// blocks (kCeRowBlock rows, kReduceBlock elements, 16 fixed lanes inside an
// element block), and the block sums are added in block order.
#pragma once

#include <cstdint>

#include "cpu/optim_cpu.h"  // DType
#include "fusedtrain/loss_math.h"

namespace fusedtrain::cpu {

// Labels as they arrive: any integer dtype, described by size and signedness.
struct LabelView {
  const void* data;
  int itemsize;  // 1, 2, 4 or 8
  bool is_signed;
};

// ---------------------------------------------------------------------------
// softmax cross-entropy, fused forward + backward
// ---------------------------------------------------------------------------
struct CeArgs {
  // logits is (n, c); out is (n, c) and may be logits itself (in place);
  // weight is (c,) or null; loss_rows is (n,) for Reduction::None, else null.
  const void* logits = nullptr;
  void* out = nullptr;
  const void* weight = nullptr;
  void* loss_rows = nullptr;
  int64_t n = 0, c = 0;
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  Reduction reduction = Reduction::Mean;
};

// Checks every label (in [0, c) or ignore_index) and writes them to `index`
// (n,) as int64, -1 for ignored rows. Returns the first bad row, or -1 when
// all are good; then `denom` is D, the sum of the weights (1 without weights)
// of the rows not ignored, summed in fixed blocks. Writes nothing else.
int64_t ce_prepare(const LabelView& labels, int64_t n, int64_t c, int64_t ignore_index,
                   const void* weight, DType dt, int64_t* index, double* denom);

// The fused pass over the rows (after ce_prepare): writes the gradient to out
// and the per-row losses to loss_rows (Reduction::None); returns the reduced
// loss (sum, or sum / D for Mean; 0 for None).
double ce_forward_backward(const CeArgs& a, const int64_t* index, double denom, DType dt);

// ---------------------------------------------------------------------------
// element-wise losses: x, t, grad are (n,); loss is (n,) for Reduction::None,
// else null. Return the reduced loss (0 for None).
// ---------------------------------------------------------------------------
double bce_with_logits(const void* x, const void* t, void* grad, void* loss, int64_t n,
                       Reduction r, DType dt);
double mse(const void* pred, const void* target, void* grad, void* loss, int64_t n, Reduction r,
           DType dt);

// ---------------------------------------------------------------------------
// dropout: x, y are (n,), mask is (n,) bytes (1 = kept).
// ---------------------------------------------------------------------------
void dropout(const void* x, void* y, uint8_t* mask, int64_t n, double p, uint64_t seed,
             uint64_t offset, DType dt);
// dx = dy * (mask != 0) / (1 - p)
void dropout_backward(const void* dy, const uint8_t* mask, void* dx, int64_t n, double p,
                      DType dt);

// Compares loss_math.h's ft_exp_nonpos with ft_exp_poly, bit for bit: on
// every float32 x <= 0 and every float32 NaN, and on float64 x <= 0 and NaN
// patterns (every stride64-th of the 2^63 with the sign bit set, the ends
// of the range and random NaNs). Returns the number that differ.
int64_t exp_selfcheck(int64_t stride64);

}  // namespace fusedtrain::cpu

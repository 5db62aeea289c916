// CUDA entry points of the loss and dropout kernels: plain C++ declarations,
// so that the pybind11 binding (compiled by the host compiler) can call them.
// Arrays are validated by the binding (bind/cuda_loss_bind.cpp); these only
// launch. Pointers are device memory; `stream` is a cudaStream_t passed as an
// opaque pointer. Nothing is allocated: the reductions use a caller's
// workspace of *_workspace_bytes(n) bytes (8-byte aligned). A CUDA error
// raises std::runtime_error naming the call, the error and file:line.
//
// The losses end with one 32-byte device-to-host copy of the reduced loss and
// the label check's verdict, and wait for it on `stream` (not on the device):
// the CPU API returns the loss as a float and raises on a bad label having
// written nothing, and so does this one. Dropout never waits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "cuda/optim_cuda.h"  // DType
#include "fusedtrain/loss_math.h"

namespace fusedtrain::cuda {

// The workspace: a header of kLossHeaderSlots 8-byte slots, then the per-row
// or per-block arrays of each loss.
constexpr int kLossHeaderSlots = 4;  // bad row (uint64), D, reduced loss, W
constexpr int kCeThreads = 256;      // threads per row of softmax cross-entropy
constexpr int kReduceThreads = 1024; // the single block of the fixed-order sums
constexpr int64_t kElemBlock = 4096; // elements per partial sum of BCE / MSE (as the CPU)
constexpr int kElemThreads = 256;
constexpr int kDropThreads = 256;
constexpr int64_t kMaxGrid = int64_t(1) << 20;  // blocks of a grid-stride launch, at most

// Bytes of workspace a call needs (host functions, no device needed).
// Cross-entropy: header, labels as int64 (n), w_y per row (n), loss per row (n).
inline size_t ce_workspace_bytes(int64_t n) {
  return size_t(kLossHeaderSlots + 3 * n) * 8;
}
FT_HD int64_t elem_blocks(int64_t n) { return (n + kElemBlock - 1) / kElemBlock; }
// BCE / MSE: header, one partial sum per block of kElemBlock elements.
inline size_t elementwise_workspace_bytes(int64_t n) {
  return size_t(kLossHeaderSlots + elem_blocks(n)) * 8;
}
// Blocks of a grid-stride launch over `work` items with `per_block` items per
// block per sweep: enough to cover the work once, at most kMaxGrid (>= 1).
inline int64_t grid_for(int64_t work, int64_t per_block) {
  const int64_t b = (work + per_block - 1) / per_block;
  return b < 1 ? 1 : (b > kMaxGrid ? kMaxGrid : b);
}

struct LabelDesc {
  const void* data;
  int itemsize;  // 1, 2, 4 or 8
  bool is_signed;
};

struct CeLaunch {
  // logits is (n, c); out is (n, c) and may be logits itself; weight is (c,)
  // or null; loss_rows is (n,) for Reduction::None, else null.
  const void* logits = nullptr;
  void* out = nullptr;
  const void* weight = nullptr;
  void* loss_rows = nullptr;
  LabelDesc labels{nullptr, 8, true};
  int64_t n = 0, c = 0;
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  Reduction reduction = Reduction::Mean;
  void* workspace = nullptr;  // ce_workspace_bytes(n)
};

struct LossResult {
  int64_t bad_row;  // first row whose label is out of range, -1 when none
  double loss;      // the reduced loss (0 for Reduction::None)
};

// Labels are checked on the device first; with a bad label nothing else is
// written (out and loss_rows keep their contents) and bad_row says where.
LossResult softmax_cross_entropy(const CeLaunch& a, DType dt, void* stream);

// x, t, grad are (n,); loss is (n,) for Reduction::None, else null.
LossResult bce_with_logits(const void* x, const void* t, void* grad, void* loss, int64_t n,
                           Reduction r, DType dt, void* workspace, void* stream);
LossResult mse(const void* pred, const void* target, void* grad, void* loss, int64_t n,
               Reduction r, DType dt, void* workspace, void* stream);

// A label's little-endian bytes as decimal text (sign-extended when signed).
inline std::string label_bytes_text(const unsigned char* raw, int itemsize, bool is_signed) {
  uint64_t u = 0;
  for (int k = itemsize - 1; k >= 0; --k) u = (u << 8) | raw[k];
  const int bits = 8 * itemsize;
  if (is_signed && bits < 64 && (u >> (bits - 1)) != 0) u |= ~uint64_t(0) << bits;
  return is_signed ? std::to_string(int64_t(u)) : std::to_string(u);
}

// Reads label `row` back (after a failed check, for the message), as text.
std::string label_text(const LabelDesc& labels, int64_t row, void* stream);

// dropout: x, y are (n,) (y may be x), mask is (n,) bytes (1 = kept); the
// same mask as the CPU's for the same (seed, offset, n).
void dropout(const void* x, void* y, uint8_t* mask, int64_t n, double p, uint64_t seed,
             uint64_t offset, DType dt, void* stream);
// dx = dy * (mask != 0) / (1 - p); dx may be dy.
void dropout_backward(const void* dy, const uint8_t* mask, void* dx, int64_t n, double p,
                      DType dt, void* stream);

}  // namespace fusedtrain::cuda

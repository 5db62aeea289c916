// CUDA entry points of the batch- and layer-normalization kernels: plain C++
// declarations, so that the pybind11 binding (compiled by the host compiler)
// can call them. Arrays are validated by the binding
// (bind/cuda_normalize_bind.cpp); these only launch. Pointers are device
// memory; `stream` is a cudaStream_t passed as an opaque pointer. Nothing is
// allocated and nothing waits: the column reductions use a caller's workspace
// of *_workspace_bytes(B, C) bytes (8-byte aligned). A CUDA error raises
// std::runtime_error naming the call, the error and file:line.
//
// Semantics and argument layout are cpu/normalize_cpu.h's: x is (B, C)
// row-major; mean and rstd are double (C,) for batch norm, (B,) for layer
// norm; weight, bias, running_mean, running_var (C,) or null.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fusedtrain/act_math.h"
#include "fusedtrain/dtype.h"
#include "fusedtrain/normalize_math.h"

namespace fusedtrain::cuda {

constexpr int kNormThreads = 256;  // threads per block of every normalization kernel

// Workspace bytes (host functions, no device needed). Batch norm forward:
// partial sums (blocks x C), mean and variance (2C) in double, mean hi / lo,
// scale and shift (4C, one 8-byte slot each).
inline size_t bn_forward_workspace_bytes(int64_t B, int64_t C) {
  const NormRowBlocks blk(B, C);
  const int64_t nb = blk.count > 1 ? blk.count : 1;
  return size_t(nb * C + 6 * C) * 8;
}
// Batch norm backward: partials (blocks x 2C); a, mdz, mdzx, mean hi / lo,
// rstd (6C slots).
inline size_t bn_backward_workspace_bytes(int64_t B, int64_t C) {
  const NormRowBlocks blk(B, C);
  const int64_t nb = blk.count > 1 ? blk.count : 1;
  return size_t(nb * 2 * C + 6 * C) * 8;
}
// Layer norm forward needs none; backward: partials (blocks x 2C) of the
// parameter gradients.
inline size_t ln_backward_workspace_bytes(int64_t B, int64_t C) {
  const NormRowBlocks blk(B, C);
  const int64_t nb = blk.count > 1 ? blk.count : 1;
  return size_t(nb * 2 * C) * 8;
}

void batch_norm_forward(const void* x, const void* weight, const void* bias, void* running_mean,
                        void* running_var, void* y, void* z, double* mean, double* rstd,
                        int64_t B, int64_t C, bool training, double momentum, double eps, Act act,
                        double slope, DType dt, void* workspace, void* stream);

void batch_norm_backward(const void* dy, const void* x, const double* mean, const double* rstd,
                         const void* s, const void* weight, void* dx, void* dweight, void* dbias,
                         int64_t B, int64_t C, Act act, double slope, bool accumulate, DType dt,
                         void* workspace, void* stream);

void layer_norm_forward(const void* x, const void* weight, const void* bias, void* y,
                        double* mean, double* rstd, int64_t B, int64_t C, double eps, DType dt,
                        void* stream);

void layer_norm_backward(const void* dy, const void* x, const double* mean, const double* rstd,
                         const void* weight, void* dx, void* dweight, void* dbias, int64_t B,
                         int64_t C, bool accumulate, DType dt, void* workspace, void* stream);

}  // namespace fusedtrain::cuda

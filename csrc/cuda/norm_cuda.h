// CUDA entry points of gradient clipping: plain C++ declarations for the
// pybind11 binding (compiled by the host compiler). Arrays are validated by
// the binding; these only launch. Everything is enqueued on `stream` (a
// cudaStream_t as an opaque pointer); nothing is synchronised; a CUDA error
// raises std::runtime_error naming the call, the error and file:line.
#pragma once

#include <cstdint>

#include "cuda/optim_cuda.h"  // DType
#include "fusedtrain/multi_tensor.h"  // TensorList

namespace fusedtrain::cuda {

// out[0] = the norm_type-norm of all elements of tl (one buffer per tensor),
// in float64, by the blocked reduction of fusedtrain/norm_math.h: the same
// bits as the CPU's cpu::global_norm for norm types 1, 2 and inf. `out` is
// one device double. A scratch buffer of one double per norm block is taken
// from the stream-ordered pool (cudaMallocAsync) and given back on `stream`.
void global_norm(const TensorList& tl, DType dt, double norm_type, double* out, void* stream);

// x *= clip_coef<T>(*total_norm, max_norm) for every element: the coefficient
// is read on the device (total_norm: one device double, e.g. global_norm's
// out), so clipping needs no round trip to the host.
void clip_by_norm(const TensorList& tl, DType dt, const double* total_norm, double max_norm,
                  void* stream);

// x = x * coef (coef rounded to the dtype once) for every element.
void scale(const TensorList& tl, DType dt, double coef, void* stream);

// x = clamp(x, lo, hi) for every element; NaN stays NaN.
void clamp(const TensorList& tl, DType dt, double lo, double hi, void* stream);

}  // namespace fusedtrain::cuda

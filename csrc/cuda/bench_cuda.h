// Benchmark-only kernels, not part of the product: the memory ceiling the
// optimizer steps are measured against on the GPU (bench/). Plain C++
// declarations for the binding (bind/cuda_bench_bind.cpp), which validates
// the arrays.
#pragma once

#include "fusedtrain/multi_tensor.h"

namespace fusedtrain::cuda {

// The traffic of an optimizer step with trivial math, on `stream`. Slots
// 0 .. n_rw - 1 are read and written (w0 += x, w_k = w_k / 2 + x), slot n_rw
// (x) is read only; tl.slots = n_rw + 1, n_rw in [1, 4], dtype float32 or
// float64.
void null_step(const TensorList& tl, DType dt, int n_rw, void* stream);

}  // namespace fusedtrain::cuda

// CUDA entry points of the fused optimizer steps: plain C++ declarations, so
// that the pybind11 binding (compiled by the host compiler) can call them.
// Arrays are validated by the binding; these only launch the update.
//
// Each call enqueues one launch sequence on `stream` (a cudaStream_t passed as
// an opaque pointer; nullptr is the legacy default stream). Nothing is
// allocated and nothing is synchronised; a CUDA error raises
// std::runtime_error naming the call, the error and file:line.
#pragma once

#include <cstdint>

#include "fusedtrain/multi_tensor.h"
#include "fusedtrain/optim_elem.h"
#include "fusedtrain/optim_math.h"

namespace fusedtrain::cuda {

using fusedtrain::DType;

// The list (device buffers, host tables), its slots and the step layout with
// its found_inf flag: fusedtrain/multi_tensor.h, shared with the CPU loops.
// The benchmarks' null step: cuda/bench_cuda.h.
void adam_step(const TensorList& tl, const StepLayout& lay, const AdamHyper& h, int64_t step,
               void* stream);
void sgd_step(const TensorList& tl, const StepLayout& lay, const SgdHyper& h, int64_t step,
              void* stream);
void rmsprop_step(const TensorList& tl, const StepLayout& lay, const RmspropHyper& h,
                  void* stream);
void adagrad_step(const TensorList& tl, const StepLayout& lay, const AdagradHyper& h,
                  int64_t step, void* stream);

// Sets *flag (a device float) to 1 when any element of the list's arrays
// (one slot of dtype dt) is inf or NaN; leaves it as it is otherwise (the
// caller zeroes it first). Nothing waits for the result.
void found_nonfinite(const TensorList& tl, DType dt, float* flag, void* stream);

}  // namespace fusedtrain::cuda

// CPU entry points of the fused optimizer steps. Arrays are validated by the
// binding; these only run the update over a TensorList.
#pragma once

#include <cstdint>

#include "cpu/parallel.h"
#include "fusedtrain/multi_tensor.h"
#include "fusedtrain/optim_elem.h"
#include "fusedtrain/optim_math.h"

namespace fusedtrain::cpu {

using fusedtrain::DType;

// The list, its slots and the step layout: fusedtrain/multi_tensor.h, shared
// with the CUDA kernels. The benchmarks' null steps: cpu/bench_cpu.h.
void adam_step(const TensorList& tl, const StepLayout& lay, const AdamHyper& h, int64_t step);
void sgd_step(const TensorList& tl, const StepLayout& lay, const SgdHyper& h, int64_t step);
void rmsprop_step(const TensorList& tl, const StepLayout& lay, const RmspropHyper& h);
void adagrad_step(const TensorList& tl, const StepLayout& lay, const AdagradHyper& h,
                  int64_t step);

// Whether any element of the list's arrays (one slot, `dt`) is inf or NaN.
bool any_nonfinite(const TensorList& tl, DType dt);

// SIMD level the kernels dispatch to on this CPU: "avx512f", "avx2" or "baseline".
const char* simd_level();

}  // namespace fusedtrain::cpu

// CPU entry points of the fused optimizer steps. Arrays are validated by the
// binding; these only run the update over a TensorList.
#pragma once

#include <cstdint>

#include "cpu/parallel.h"
#include "fusedtrain/optim_elem.h"
#include "fusedtrain/optim_math.h"

namespace fusedtrain::cpu {

using fusedtrain::DType;

// Buffer slots of each optimizer's TensorList, in this order. Optional state
// buffers take the next slot only when their variant is on; for float16 /
// bfloat16 params the float32 master weights take the last slot.
namespace adam_slot { enum : int { kParam, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq }; }
namespace sgd_slot { enum : int { kParam, kGrad, kMomentumBuffer }; }
namespace rmsprop_slot { enum : int { kParam, kGrad, kSquareAvg, kOptional }; }  // [grad_avg], [momentum_buffer]
namespace adagrad_slot { enum : int { kParam, kGrad, kSum }; }

// The storage of one call: param (and grad) dtype, state dtype, and for
// narrow params the rounding of the parameter and its Philox stream.
struct StepLayout {
  DType param = DType::F32;
  DType state = DType::F32;
  bool stochastic = false;
  uint64_t seed = 0, offset = 0;
};

void adam_step(const TensorList& tl, const StepLayout& lay, const AdamHyper& h, int64_t step);
void sgd_step(const TensorList& tl, const StepLayout& lay, const SgdHyper& h, int64_t step);
void rmsprop_step(const TensorList& tl, const StepLayout& lay, const RmspropHyper& h);
void adagrad_step(const TensorList& tl, const StepLayout& lay, const AdagradHyper& h,
                  int64_t step);

// Memory ceiling for benchmarks: reads every buffer of the list and writes the
// first n_rw of them back with trivial math (the same traffic as a step).
void null_step(const TensorList& tl, DType dt, int n_rw);

// The memory ceiling of a mixed-precision step: slot 0 (bfloat16 params) is
// written only, slot 1 (bfloat16 grads) read only, slots 2.. (float32 master
// and states, n_rw of them) read and written, with trivial math (the traffic
// of bfloat16 + float32-master Adam for n_rw = 3).
void null_mixed_step(const TensorList& tl, int n_rw);

// Whether any element of the list's arrays (one slot, `dt`) is inf or NaN.
bool any_nonfinite(const TensorList& tl, DType dt);

// SIMD level the kernels dispatch to on this CPU: "avx512f", "avx2" or "baseline".
const char* simd_level();

}  // namespace fusedtrain::cpu

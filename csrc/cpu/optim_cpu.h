// CPU entry points of the fused optimizer steps. Arrays are validated by the
// binding; these only run the update over a TensorList.
#pragma once

#include <cstdint>

#include "cpu/parallel.h"
#include "fusedtrain/optim_math.h"

namespace fusedtrain::cpu {

enum class DType { F32, F64 };

// Buffer slots of each optimizer's TensorList, in this order. Optional state
// buffers take the next slot only when their variant is on.
namespace adam_slot { enum : int { kParam, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq }; }
namespace sgd_slot { enum : int { kParam, kGrad, kMomentumBuffer }; }
namespace rmsprop_slot { enum : int { kParam, kGrad, kSquareAvg, kOptional }; }  // [grad_avg], [momentum_buffer]
namespace adagrad_slot { enum : int { kParam, kGrad, kSum }; }

void adam_step(const TensorList& tl, DType dt, const AdamHyper& h, int64_t step);
void sgd_step(const TensorList& tl, DType dt, const SgdHyper& h, int64_t step);
void rmsprop_step(const TensorList& tl, DType dt, const RmspropHyper& h);
void adagrad_step(const TensorList& tl, DType dt, const AdagradHyper& h, int64_t step);

// Memory ceiling for benchmarks: reads every buffer of the list and writes the
// first n_rw of them back with trivial math (the same traffic as a step).
void null_step(const TensorList& tl, DType dt, int n_rw);

// SIMD level the kernels dispatch to on this CPU: "avx512f", "avx2" or "baseline".
const char* simd_level();

}  // namespace fusedtrain::cpu

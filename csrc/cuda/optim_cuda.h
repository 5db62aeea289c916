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

#include "fusedtrain/optim_math.h"

namespace fusedtrain::cuda {

enum class DType { F32, F64 };

// n tensors with `slots` device buffers each: ptr[i * slots + k] is buffer k
// of tensor i, which holds numel[i] elements. Slot order as below.
struct DeviceList {
  int64_t n = 0;
  int slots = 0;
  void* const* ptr = nullptr;
  const int64_t* numel = nullptr;
};

// Buffer slots of each optimizer's DeviceList, in this order (the same order
// as the CPU's cpu/optim_cpu.h). Optional state buffers take the next slot
// only when their variant is on.
namespace adam_slot { enum : int { kParam, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq }; }
namespace sgd_slot { enum : int { kParam, kGrad, kMomentumBuffer }; }
namespace rmsprop_slot { enum : int { kParam, kGrad, kSquareAvg, kOptional }; }  // [grad_avg], [momentum_buffer]
namespace adagrad_slot { enum : int { kParam, kGrad, kSum }; }

void adam_step(const DeviceList& dl, DType dt, const AdamHyper& h, int64_t step, void* stream);
void sgd_step(const DeviceList& dl, DType dt, const SgdHyper& h, int64_t step, void* stream);
void rmsprop_step(const DeviceList& dl, DType dt, const RmspropHyper& h, void* stream);
void adagrad_step(const DeviceList& dl, DType dt, const AdagradHyper& h, int64_t step,
                  void* stream);

// Benchmark memory ceiling: the traffic of an optimizer step with trivial
// math. Slots 0 .. n_rw - 1 are read and written (w0 += x, w_k = w_k / 2 + x),
// slot n_rw (x) is read only; dl.slots = n_rw + 1, n_rw in [1, 4].
void null_step(const DeviceList& dl, DType dt, int n_rw, void* stream);

}  // namespace fusedtrain::cuda

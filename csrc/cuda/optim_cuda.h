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

#include "fusedtrain/optim_elem.h"
#include "fusedtrain/optim_math.h"

namespace fusedtrain::cuda {

using fusedtrain::DType;

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
// only when their variant is on; for float16 / bfloat16 params the float32
// master weights take the last slot.
namespace adam_slot { enum : int { kParam, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq }; }
namespace sgd_slot { enum : int { kParam, kGrad, kMomentumBuffer }; }
namespace rmsprop_slot { enum : int { kParam, kGrad, kSquareAvg, kOptional }; }  // [grad_avg], [momentum_buffer]
namespace adagrad_slot { enum : int { kParam, kGrad, kSum }; }

// The storage of one call (as the CPU's cpu::StepLayout), and found_inf: a
// device pointer to one float32, or null. When it points at a nonzero value
// every block returns before touching memory (read in the kernel: no sync).
struct StepLayout {
  DType param = DType::F32;
  DType state = DType::F32;
  bool stochastic = false;
  uint64_t seed = 0, offset = 0;
  const float* found_inf = nullptr;
};

void adam_step(const DeviceList& dl, const StepLayout& lay, const AdamHyper& h, int64_t step,
               void* stream);
void sgd_step(const DeviceList& dl, const StepLayout& lay, const SgdHyper& h, int64_t step,
              void* stream);
void rmsprop_step(const DeviceList& dl, const StepLayout& lay, const RmspropHyper& h,
                  void* stream);
void adagrad_step(const DeviceList& dl, const StepLayout& lay, const AdagradHyper& h,
                  int64_t step, void* stream);

// Sets *flag (a device float) to 1 when any element of the list's arrays
// (one slot of dtype dt) is inf or NaN; leaves it as it is otherwise (the
// caller zeroes it first). Nothing waits for the result.
void found_nonfinite(const DeviceList& dl, DType dt, float* flag, void* stream);

// Benchmark memory ceiling: the traffic of an optimizer step with trivial
// math. Slots 0 .. n_rw - 1 are read and written (w0 += x, w_k = w_k / 2 + x),
// slot n_rw (x) is read only; dl.slots = n_rw + 1, n_rw in [1, 4].
void null_step(const DeviceList& dl, DType dt, int n_rw, void* stream);

}  // namespace fusedtrain::cuda

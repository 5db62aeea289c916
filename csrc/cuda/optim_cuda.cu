// Fused optimizer steps on the GPU: one multi-tensor launch sequence per call
// over a whole list of tensors. The per-element update is the optim_math.h
// function the CPU loops (cpu/optim_cpu.cpp) call, with the same template
// variants, and the per-step scalars come from the same make_*_scalars on the
// host in double; nvcc runs with --fmad=false, so the GPU rounds as the CPU.
#include <cuda_runtime.h>

#include <stdexcept>

#include "cuda/multi_tensor.cuh"
#include "cuda/optim_cuda.h"
#include "fusedtrain/optim_math.h"

namespace fusedtrain::cuda {

namespace {

// ---------------------------------------------------------------------------
// CUDA kernels: the element ops that multi_tensor_kernel (multi_tensor.cuh)
// runs. x holds one element of each buffer, in the slot order of optim_cuda.h.
// ---------------------------------------------------------------------------
template <typename T, WeightDecay WD, AmsGrad A>
struct AdamOp {
  using value_type = T;
  static constexpr int kDepth = A == AmsGrad::On ? 5 : 4;
  __host__ __device__ static constexpr bool reads(int) { return true; }
  __host__ __device__ static constexpr bool writes(int k) { return k != adam_slot::kGrad; }
  AdamScalars<T> s;

  __host__ __device__ void operator()(T (&x)[kDepth]) const {
    using namespace adam_slot;
    T vmax = T(0);
    if constexpr (A == AmsGrad::On) vmax = x[kMaxExpAvgSq];
    adam_update<WD, A>(x[kParam], x[kGrad], x[kExpAvg], x[kExpAvgSq], vmax, s);
    if constexpr (A == AmsGrad::On) x[kMaxExpAvgSq] = vmax;
  }
};

// Momentum::First: the buffer is written (set to d) but not read, as torch
// initialises it on step 1; its old contents are ignored.
template <typename T, Momentum M, Nesterov N>
struct SgdOp {
  using value_type = T;
  static constexpr int kDepth = M == Momentum::Off ? 2 : 3;
  __host__ __device__ static constexpr bool reads(int k) {
    return k != sgd_slot::kMomentumBuffer || M == Momentum::On;
  }
  __host__ __device__ static constexpr bool writes(int k) { return k != sgd_slot::kGrad; }
  SgdScalars<T> s;

  __host__ __device__ void operator()(T (&x)[kDepth]) const {
    using namespace sgd_slot;
    T buf = T(0);
    if constexpr (M == Momentum::On) buf = x[kMomentumBuffer];
    sgd_update<M, N>(x[kParam], x[kGrad], buf, s);
    if constexpr (M != Momentum::Off) x[kMomentumBuffer] = buf;
  }
};

template <typename T, Centered C, Momentum M>
struct RmspropOp {
  using value_type = T;
  static constexpr int kGradAvg = rmsprop_slot::kOptional;
  static constexpr int kBuf = kGradAvg + (C == Centered::On ? 1 : 0);
  static constexpr int kDepth = kBuf + (M == Momentum::On ? 1 : 0);
  __host__ __device__ static constexpr bool reads(int) { return true; }
  __host__ __device__ static constexpr bool writes(int k) { return k != rmsprop_slot::kGrad; }
  RmspropScalars<T> s;

  __host__ __device__ void operator()(T (&x)[kDepth]) const {
    using namespace rmsprop_slot;
    T ga = T(0), buf = T(0);
    if constexpr (C == Centered::On) ga = x[kGradAvg];
    if constexpr (M == Momentum::On) buf = x[kBuf];
    rmsprop_update<C, M>(x[kParam], x[kGrad], x[kSquareAvg], ga, buf, s);
    if constexpr (C == Centered::On) x[kGradAvg] = ga;
    if constexpr (M == Momentum::On) x[kBuf] = buf;
  }
};

template <typename T>
struct AdagradOp {
  using value_type = T;
  static constexpr int kDepth = 3;
  __host__ __device__ static constexpr bool reads(int) { return true; }
  __host__ __device__ static constexpr bool writes(int k) { return k != adagrad_slot::kGrad; }
  AdagradScalars<T> s;

  __host__ __device__ void operator()(T (&x)[kDepth]) const {
    using namespace adagrad_slot;
    adagrad_update(x[kParam], x[kGrad], x[kSum], s);
  }
};

// The null op of the benchmarks: the memory traffic of an optimizer with
// D - 1 updated buffers and one read-only one (the last), and trivial math.
template <typename T, int D>
struct NullOp {
  using value_type = T;
  static constexpr int kDepth = D;
  __host__ __device__ static constexpr bool reads(int) { return true; }
  __host__ __device__ static constexpr bool writes(int k) { return k < D - 1; }

  __host__ __device__ void operator()(T (&x)[kDepth]) const {
    const T g = x[D - 1];
    x[0] = x[0] + g;
#pragma unroll
    for (int k = 1; k < D - 1; ++k) x[k] = x[k] * T(0.5) + g;
  }
};

// ---------------------------------------------------------------------------
// kernel launchers: pick the variant once (as the CPU drivers do), then one
// multi-tensor launch sequence over the list
// ---------------------------------------------------------------------------
template <class Op>
void run(const DeviceList& dl, const Op& op, void* stream) {
  multi_tensor_apply(dl, op, static_cast<cudaStream_t>(stream));
}

template <typename T>
void adam_typed(const DeviceList& dl, const AdamHyper& h, int64_t step, void* stream) {
  const auto s = make_adam_scalars<T>(h, step);
  with_adam_variant(h, [&](auto v) {
    using V = decltype(v);
    run(dl, AdamOp<T, V::kWeightDecay, V::kAmsGrad>{s}, stream);
  });
}

template <typename T>
void sgd_typed(const DeviceList& dl, const SgdHyper& h, int64_t step, void* stream) {
  const auto s = make_sgd_scalars<T>(h);
  with_sgd_variant(h, step, [&](auto v) {
    using V = decltype(v);
    run(dl, SgdOp<T, V::kMomentum, V::kNesterov>{s}, stream);
  });
}

template <typename T>
void rmsprop_typed(const DeviceList& dl, const RmspropHyper& h, void* stream) {
  const auto s = make_rmsprop_scalars<T>(h);
  with_rmsprop_variant(h, [&](auto v) {
    using V = decltype(v);
    run(dl, RmspropOp<T, V::kCentered, V::kMomentum>{s}, stream);
  });
}

template <typename T>
void adagrad_typed(const DeviceList& dl, const AdagradHyper& h, int64_t step, void* stream) {
  run(dl, AdagradOp<T>{make_adagrad_scalars<T>(h, step)}, stream);
}

template <typename T>
void null_typed(const DeviceList& dl, int n_rw, void* stream) {
  switch (n_rw) {
    case 1: return run(dl, NullOp<T, 2>{}, stream);
    case 2: return run(dl, NullOp<T, 3>{}, stream);
    case 3: return run(dl, NullOp<T, 4>{}, stream);
    case 4: return run(dl, NullOp<T, 5>{}, stream);
    default: throw std::invalid_argument("null_step: 1 to 4 written lists");
  }
}

}  // namespace

void null_step(const DeviceList& dl, DType dt, int n_rw, void* stream) {
  dt == DType::F32 ? null_typed<float>(dl, n_rw, stream) : null_typed<double>(dl, n_rw, stream);
}

void adam_step(const DeviceList& dl, DType dt, const AdamHyper& h, int64_t step, void* stream) {
  dt == DType::F32 ? adam_typed<float>(dl, h, step, stream)
                   : adam_typed<double>(dl, h, step, stream);
}
void sgd_step(const DeviceList& dl, DType dt, const SgdHyper& h, int64_t step, void* stream) {
  dt == DType::F32 ? sgd_typed<float>(dl, h, step, stream)
                   : sgd_typed<double>(dl, h, step, stream);
}
void rmsprop_step(const DeviceList& dl, DType dt, const RmspropHyper& h, void* stream) {
  dt == DType::F32 ? rmsprop_typed<float>(dl, h, stream) : rmsprop_typed<double>(dl, h, stream);
}
void adagrad_step(const DeviceList& dl, DType dt, const AdagradHyper& h, int64_t step,
                  void* stream) {
  dt == DType::F32 ? adagrad_typed<float>(dl, h, step, stream)
                   : adagrad_typed<double>(dl, h, step, stream);
}

}  // namespace fusedtrain::cuda

// Benchmark-only kernels (cuda/bench_cuda.h): the optimizer steps' memory
// ceiling, run by the same multi-tensor apply (cuda/multi_tensor.cuh) as the
// steps, so that only the math differs.
#include <cuda_runtime.h>

#include <stdexcept>

#include "cuda/bench_cuda.h"
#include "cuda/multi_tensor.cuh"

namespace fusedtrain::cuda {

namespace {

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// ---------------------------------------------------------------------------
// CUDA kernels: the element op that multi_tensor_kernel runs
// ---------------------------------------------------------------------------
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
// kernel launchers
// ---------------------------------------------------------------------------
template <typename T>
void null_typed(const TensorList& tl, int n_rw, void* stream) {
  switch (n_rw) {
    case 1: return multi_tensor_apply(tl, NullOp<T, 2>{}, as_stream(stream));
    case 2: return multi_tensor_apply(tl, NullOp<T, 3>{}, as_stream(stream));
    case 3: return multi_tensor_apply(tl, NullOp<T, 4>{}, as_stream(stream));
    case 4: return multi_tensor_apply(tl, NullOp<T, 5>{}, as_stream(stream));
    default: throw std::invalid_argument("null_step: 1 to 4 written lists");
  }
}

}  // namespace

void null_step(const TensorList& tl, DType dt, int n_rw, void* stream) {
  dt == DType::F32 ? null_typed<float>(tl, n_rw, stream) : null_typed<double>(tl, n_rw, stream);
}

}  // namespace fusedtrain::cuda

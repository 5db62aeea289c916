// Fused optimizer steps on the GPU: one multi-tensor launch sequence per call
// over a whole list of tensors. The per-element update is the optim_math.h
// function the CPU loops (cpu/optim_cpu.cpp) call, with the same template
// variants, and the per-step scalars come from the same make_*_scalars on the
// host in double; nvcc runs with --fmad=false, so the GPU rounds as the CPU.
#include <cuda_runtime.h>

#include <stdexcept>

#include "cuda/multi_tensor.cuh"
#include "cuda/optim_cuda.h"
#include "fusedtrain/optim_elem.h"
#include "fusedtrain/optim_math.h"

namespace fusedtrain::cuda {

namespace {

// ---------------------------------------------------------------------------
// CUDA kernels: the element ops that multi_tensor_kernel (multi_tensor.cuh)
// runs. x holds one element of each buffer, in the slot order of
// fusedtrain/multi_tensor.h.
// ---------------------------------------------------------------------------
template <typename T, WeightDecay WD, AmsGrad A>
struct AdamOp {
  using value_type = T;
  static constexpr int kDepth = A == AmsGrad::On ? 5 : 4;
  __host__ __device__ static constexpr bool reads(int) { return true; }
  __host__ __device__ static constexpr bool writes(int k) { return k != adam_slot::kGrad; }
  AdamScalars<T> s;
  const float* found_inf;  // skip the launch when *found_inf != 0 (null: never)

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
  const float* found_inf;  // skip the launch when *found_inf != 0 (null: never)

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
  const float* found_inf;  // skip the launch when *found_inf != 0 (null: never)

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
  const float* found_inf;  // skip the launch when *found_inf != 0 (null: never)

  __host__ __device__ void operator()(T (&x)[kDepth]) const {
    using namespace adagrad_slot;
    adagrad_update(x[kParam], x[kGrad], x[kSum], s);
  }
};

// The non-finite check of a gradient list (the CPU's any_nonfinite): the
// elements as unsigned integers of their width, all exponent bits set means
// inf or NaN. Every thread that finds one writes the same 1.0f.
template <typename U>
struct NonfiniteOp {
  using value_type = U;
  static constexpr int kDepth = 1;
  __host__ __device__ static constexpr bool reads(int) { return true; }
  __host__ __device__ static constexpr bool writes(int) { return false; }
  U exp_mask;
  float* flag;

  __host__ __device__ void operator()(U (&x)[1]) const {
    if ((x[0] & exp_mask) == exp_mask) *flag = 1.0f;
  }
};

// ---------------------------------------------------------------------------
// Mixed precision (float16 / bfloat16 params, float32 master weights): the
// buffers have different element types, so these run element by element
// (consecutive threads on consecutive elements) through the element
// functions of optim_elem.h, which the CPU loops call too. Their table adds
// each tensor's first index in the call's concatenation (tl.offsets), which
// numbers the elements for stochastic rounding as the CPU does.
// ---------------------------------------------------------------------------
template <int Depth>
struct MixedTable {
  // one word per tensor more than a ChunkTable<Depth> (`first`)
  static constexpr int kMaxTensors = mta::max_tensors_for(Depth + 1);
  void* addr[Depth][kMaxTensors];
  int64_t numel[kMaxTensors];
  int64_t first[kMaxTensors];  // index of the tensor's element 0 in the whole call
  int32_t block_chunk[mta::kMaxBlocks];
  uint8_t block_tensor[mta::kMaxBlocks];
};

// What every mixed Op carries besides its scalars.
struct MixedCommon {
  const float* found_inf;
  uint64_t seed, offset;
};

template <class Op>
__global__ void __launch_bounds__(kBlockThreads)
    mixed_kernel(const __grid_constant__ MixedTable<Op::kDepth> table, const Op op) {
  if (op.c.found_inf != nullptr && *op.c.found_inf != 0.0f) return;
  const int slot = table.block_tensor[blockIdx.x];
  const int64_t begin = int64_t(table.block_chunk[blockIdx.x]) * mta::kChunkSize;
  const int64_t numel = table.numel[slot];
  const int64_t end = numel - begin < mta::kChunkSize ? numel : begin + mta::kChunkSize;
  void* ptr[Op::kDepth];
#pragma unroll
  for (int k = 0; k < Op::kDepth; ++k) ptr[k] = table.addr[k][slot];
  const RoundCtx rc{op.c.seed, op.c.offset, table.first[slot]};
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) op(ptr, i, rc);
}

template <class L>
struct Typed {
  using P = typename L::param_t;
  using S = typename L::state_t;
  __device__ static P* param(void* const* a, int k) { return static_cast<P*>(a[k]); }
  __device__ static S* state(void* const* a, int k) { return static_cast<S*>(a[k]); }
};

template <class L, WeightDecay WD, AmsGrad A>
struct AdamMixedOp : Typed<L> {
  static constexpr int kDepth = A == AmsGrad::On ? 6 : 5;  // + master
  AdamScalars<float> s;
  MixedCommon c;
  __device__ void operator()(void* const* a, int64_t i, const RoundCtx& rc) const {
    using namespace adam_slot;
    adam_element<L, WD, A>(this->param(a, kParam), this->param(a, kGrad),
                           static_cast<float*>(a[kDepth - 1]), this->state(a, kExpAvg),
                           this->state(a, kExpAvgSq),
                           A == AmsGrad::On ? this->state(a, kMaxExpAvgSq) : nullptr, i, s, rc);
  }
};

template <class L, Momentum M, Nesterov N>
struct SgdMixedOp : Typed<L> {
  static constexpr int kDepth = M == Momentum::Off ? 3 : 4;
  SgdScalars<float> s;
  MixedCommon c;
  __device__ void operator()(void* const* a, int64_t i, const RoundCtx& rc) const {
    using namespace sgd_slot;
    sgd_element<L, M, N>(this->param(a, kParam), this->param(a, kGrad),
                         static_cast<float*>(a[kDepth - 1]),
                         M != Momentum::Off ? this->state(a, kMomentumBuffer) : nullptr, i, s, rc);
  }
};

template <class L, Centered C, Momentum M>
struct RmspropMixedOp : Typed<L> {
  static constexpr int kGradAvg = rmsprop_slot::kOptional;
  static constexpr int kBuf = kGradAvg + (C == Centered::On ? 1 : 0);
  static constexpr int kDepth = kBuf + (M == Momentum::On ? 1 : 0) + 1;
  RmspropScalars<float> s;
  MixedCommon c;
  __device__ void operator()(void* const* a, int64_t i, const RoundCtx& rc) const {
    using namespace rmsprop_slot;
    rmsprop_element<L, C, M>(this->param(a, kParam), this->param(a, kGrad),
                             static_cast<float*>(a[kDepth - 1]), this->state(a, kSquareAvg),
                             C == Centered::On ? this->state(a, kGradAvg) : nullptr,
                             M == Momentum::On ? this->state(a, kBuf) : nullptr, i, s, rc);
  }
};

template <class L>
struct AdagradMixedOp : Typed<L> {
  static constexpr int kDepth = 4;
  AdagradScalars<float> s;
  MixedCommon c;
  __device__ void operator()(void* const* a, int64_t i, const RoundCtx& rc) const {
    using namespace adagrad_slot;
    adagrad_element<L>(this->param(a, kParam), this->param(a, kGrad),
                       static_cast<float*>(a[kDepth - 1]), this->state(a, kSum), i, s, rc);
  }
};

// ---------------------------------------------------------------------------
// kernel launchers: pick the layout and the variant once (as the CPU drivers
// do), then one multi-tensor launch sequence over the list
// ---------------------------------------------------------------------------
template <class Op>
void run(const TensorList& tl, const Op& op, void* stream) {
  multi_tensor_apply(tl, op, static_cast<cudaStream_t>(stream));
}

// The mixed launch sequence: the chunk plan of multi_tensor_apply, with each
// tensor's first global index in the table.
template <class Op>
void run_mixed(const TensorList& tl, const Op& op, void* stream) {
  constexpr int D = Op::kDepth;
  using Table = MixedTable<D>;
  static_assert(sizeof(Table) + sizeof(Op) <= mta::kKernelParamBytes,
                "kernel arguments over the 4 KiB limit");
  if (tl.slots != D)
    throw std::logic_error("run_mixed: expected " + std::to_string(D) +
                           " buffers per tensor, received " + std::to_string(tl.slots));
  require_int32_chunks(tl);
  const auto s = static_cast<cudaStream_t>(stream);
  Table table{};
  mta::plan_launches(
      tl.numel, tl.n, mta::kChunkSize, Table::kMaxTensors, mta::kMaxBlocks,
      [&](int slot, int64_t i) {
        for (int k = 0; k < D; ++k) table.addr[k][slot] = tl.ptr[i * D + k];
        table.numel[slot] = tl.numel[i];
        table.first[slot] = tl.offsets[i];
      },
      [&](int b, int slot, int64_t chunk) {
        table.block_tensor[b] = uint8_t(slot);
        table.block_chunk[b] = int32_t(chunk);
      },
      [&](int, int blocks) {
        mixed_kernel<Op><<<blocks, kBlockThreads, 0, s>>>(table, op);
        FT_CUDA_CHECK(cudaGetLastError());
      });
}

MixedCommon common_of(const StepLayout& lay) { return MixedCommon{lay.found_inf, lay.seed, lay.offset}; }

}  // namespace

void adam_step(const TensorList& tl, const StepLayout& lay, const AdamHyper& h, int64_t step,
               void* stream) {
  with_layout(lay.param, lay.state, lay.stochastic, [&](auto l) {
    using L = decltype(l);
    using T = typename L::T;
    const auto s = make_adam_scalars<T>(h, step);
    with_adam_variant(h, [&](auto v) {
      using V = decltype(v);
      if constexpr (L::kMaster) {
        run_mixed(tl, AdamMixedOp<L, V::kWeightDecay, V::kAmsGrad>{{}, s, common_of(lay)}, stream);
      } else {
        run(tl, AdamOp<T, V::kWeightDecay, V::kAmsGrad>{s, lay.found_inf}, stream);
      }
    });
  });
}

void sgd_step(const TensorList& tl, const StepLayout& lay, const SgdHyper& h, int64_t step,
              void* stream) {
  with_layout(lay.param, lay.state, lay.stochastic, [&](auto l) {
    using L = decltype(l);
    using T = typename L::T;
    const auto s = make_sgd_scalars<T>(h);
    with_sgd_variant(h, step, [&](auto v) {
      using V = decltype(v);
      if constexpr (L::kMaster) {
        run_mixed(tl, SgdMixedOp<L, V::kMomentum, V::kNesterov>{{}, s, common_of(lay)}, stream);
      } else {
        run(tl, SgdOp<T, V::kMomentum, V::kNesterov>{s, lay.found_inf}, stream);
      }
    });
  });
}

void rmsprop_step(const TensorList& tl, const StepLayout& lay, const RmspropHyper& h,
                  void* stream) {
  with_layout(lay.param, lay.state, lay.stochastic, [&](auto l) {
    using L = decltype(l);
    using T = typename L::T;
    const auto s = make_rmsprop_scalars<T>(h);
    with_rmsprop_variant(h, [&](auto v) {
      using V = decltype(v);
      if constexpr (L::kMaster) {
        run_mixed(tl, RmspropMixedOp<L, V::kCentered, V::kMomentum>{{}, s, common_of(lay)},
                  stream);
      } else {
        run(tl, RmspropOp<T, V::kCentered, V::kMomentum>{s, lay.found_inf}, stream);
      }
    });
  });
}

void found_nonfinite(const TensorList& tl, DType dt, float* flag, void* stream) {
  switch (dt) {
    case DType::F32: return run(tl, NonfiniteOp<uint32_t>{0x7F800000u, flag}, stream);
    case DType::F64: return run(tl, NonfiniteOp<uint64_t>{0x7FF0000000000000ull, flag}, stream);
    case DType::F16: return run(tl, NonfiniteOp<uint16_t>{uint16_t(0x7C00u), flag}, stream);
    case DType::BF16: return run(tl, NonfiniteOp<uint16_t>{uint16_t(0x7F80u), flag}, stream);
  }
}

void adagrad_step(const TensorList& tl, const StepLayout& lay, const AdagradHyper& h,
                  int64_t step, void* stream) {
  with_layout(lay.param, lay.state, lay.stochastic, [&](auto l) {
    using L = decltype(l);
    using T = typename L::T;
    const auto s = make_adagrad_scalars<T>(h, step);
    if constexpr (L::kMaster) {
      run_mixed(tl, AdagradMixedOp<L>{{}, s, common_of(lay)}, stream);
    } else {
      run(tl, AdagradOp<T>{s, lay.found_inf}, stream);
    }
  });
}

}  // namespace fusedtrain::cuda

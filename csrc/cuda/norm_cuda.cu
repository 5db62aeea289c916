// Gradient clipping on the GPU. The global norm is the two-stage reduction of
// fusedtrain/norm_math.h, with no atomics: stage 1 (a multi-tensor launch
// sequence over a chunk table) writes one partial per norm block to a scratch
// array, at a position fixed by the tensor and the block; stage 2 (one thread
// block) folds the partials in the fixed order. Run to run, and against the
// CPU, the result is the same bits (norm types 1, 2, inf). Scale and clamp are
// element ops on multi_tensor.cuh's multi-tensor apply.
#include <cuda_runtime.h>

#include <vector>

#include "cuda/multi_tensor.cuh"
#include "cuda/norm_cuda.h"
#include "fusedtrain/norm_math.h"

namespace fusedtrain::cuda {

namespace {

// Stage 1: one thread per lane of a norm block; one CUDA block per chunk.
constexpr int kNormThreads = kBlockThreads;                     // 512
constexpr int kBlocksPerChunk = kNormThreads / kNormLanes;      // 32 norm blocks
static_assert(mta::kChunkSize == kNormBlock * kBlocksPerChunk,
              "a chunk is exactly the norm blocks its threads cover");
static_assert(kFinalLanes <= 1024, "stage 2 runs one thread per final lane");

// The kernel argument of one stage-1 launch: the chunk table of
// fusedtrain/multi_tensor.h with, per tensor, the index of its first norm
// block among all blocks of the call (where its partials go). Three words per
// tensor: the capacity of a depth-2 table.
struct NormTable {
  static constexpr int kMaxTensors = mta::max_tensors_for(2);
  const void* addr[kMaxTensors];
  int64_t numel[kMaxTensors];
  int64_t first_block[kMaxTensors];
  int32_t block_chunk[mta::kMaxBlocks];
  uint8_t block_tensor[mta::kMaxBlocks];
};
static_assert(sizeof(NormTable) + 2 * sizeof(double) <= mta::kKernelParamBytes,
              "kernel arguments over the 4 KiB limit");
static_assert(NormTable::kMaxTensors <= 256, "slots are stored as uint8_t");

// ---------------------------------------------------------------------------
// CUDA kernels
// ---------------------------------------------------------------------------

// Block `blockIdx.x` covers chunk table.block_chunk[.] of the tensor in slot
// table.block_tensor[.]; thread t is lane t % kNormLanes of norm block
// t / kNormLanes of that chunk. partials is (number of norm blocks of the call,).
template <NormKind K, typename T>
__global__ void __launch_bounds__(kNormThreads)
    norm_partials_kernel(const __grid_constant__ NormTable table, const double p,
                         double* __restrict__ partials) {
  const int slot = table.block_tensor[blockIdx.x];
  const int lane = int(threadIdx.x) % kNormLanes;
  const int64_t k = int64_t(table.block_chunk[blockIdx.x]) * kBlocksPerChunk +
                    int64_t(threadIdx.x) / kNormLanes;  // norm block within the tensor
  const int64_t start = k * kNormBlock;
  const int64_t left = table.numel[slot] - start;
  const int64_t m = left < kNormBlock ? left : kNormBlock;  // <= 0 past the tensor's end
  const T* __restrict__ x = static_cast<const T*>(table.addr[slot]) + start;

  double acc = 0.0;
#pragma unroll 4
  for (int64_t i = lane; i < m; i += kNormLanes)
    acc = norm_combine<K>(acc, norm_term<K>(double(x[i]), p));
  // fold_lanes's halving: lane l combines lane l + w (a lane group is aligned
  // within the warp, and width confines the shuffle to it)
#pragma unroll
  for (int w = kNormLanes / 2; w >= 1; w /= 2)
    acc = norm_combine<K>(acc, __shfl_down_sync(0xffffffffu, acc, w, kNormLanes));
  if (lane == 0 && m > 0) partials[table.first_block[slot] + k] = acc;
}

// One block of kFinalLanes threads: thread l folds partials l, l + kFinalLanes,
// ... in order, then the lanes are halved in shared memory. out is (1,).
template <NormKind K>
__global__ void __launch_bounds__(kFinalLanes)
    norm_final_kernel(const double* __restrict__ partials, const int64_t nblocks,
                      const double p, double* __restrict__ out) {
  __shared__ double lanes[kFinalLanes];
  const int l = int(threadIdx.x);
  double acc = 0.0;
  for (int64_t b = l; b < nblocks; b += kFinalLanes) acc = norm_combine<K>(acc, partials[b]);
  lanes[l] = acc;
  __syncthreads();
  for (int w = kFinalLanes / 2; w >= 1; w /= 2) {
    if (l < w) lanes[l] = norm_combine<K>(lanes[l], lanes[l + w]);
    __syncthreads();
  }
  if (l == 0) out[0] = norm_finish<K>(lanes[0], p);
}

// Element ops for multi_tensor_apply (multi_tensor.cuh): one buffer, in place.
template <typename T>
struct ScaleOp {
  using value_type = T;
  static constexpr int kDepth = 1;
  __host__ __device__ static constexpr bool reads(int) { return true; }
  __host__ __device__ static constexpr bool writes(int) { return true; }
  T coef;
  __host__ __device__ void operator()(T (&x)[1]) const { x[0] = x[0] * coef; }
};

template <typename T>
struct ClipByNormOp {
  using value_type = T;
  static constexpr int kDepth = 1;
  __host__ __device__ static constexpr bool reads(int) { return true; }
  __host__ __device__ static constexpr bool writes(int) { return true; }
  const double* total_norm;  // device memory, written by an earlier launch on the stream
  double max_norm;
  __host__ __device__ void operator()(T (&x)[1]) const {
    x[0] = x[0] * clip_coef<T>(*total_norm, max_norm);
  }
};

template <typename T>
struct ClampOp {
  using value_type = T;
  static constexpr int kDepth = 1;
  __host__ __device__ static constexpr bool reads(int) { return true; }
  __host__ __device__ static constexpr bool writes(int) { return true; }
  T lo, hi;
  __host__ __device__ void operator()(T (&x)[1]) const { x[0] = clamp_value(x[0], lo, hi); }
};

// ---------------------------------------------------------------------------
// kernel launchers
// ---------------------------------------------------------------------------
template <NormKind K, typename T>
void norm_typed(const TensorList& tl, double p, double* out, cudaStream_t stream) {
  // first norm block of each tensor among all blocks of the call (host
  // scratch reused across calls on this thread)
  thread_local std::vector<int64_t> first_block;
  first_block.resize(size_t(tl.n) + 1);
  first_block[0] = 0;
  require_int32_chunks(tl);
  for (int64_t i = 0; i < tl.n; ++i)
    first_block[size_t(i) + 1] = first_block[size_t(i)] + (tl.numel[i] + kNormBlock - 1) / kNormBlock;
  const int64_t nblocks = first_block[size_t(tl.n)];
  // partials is (nblocks,): freed on the stream after stage 2, or when a
  // launch throws
  struct Scratch {
    double* ptr = nullptr;
    cudaStream_t stream;
    ~Scratch() {
      if (ptr != nullptr) cudaFreeAsync(ptr, stream);
    }
  } scratch{nullptr, stream};
  if (nblocks > 0)
    FT_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&scratch.ptr),
                                  size_t(nblocks) * sizeof(double), stream));
  double* partials = scratch.ptr;

  NormTable table{};
  mta::plan_launches(
      tl.numel, tl.n, mta::kChunkSize, NormTable::kMaxTensors, mta::kMaxBlocks,
      [&](int slot, int64_t i) {
        table.addr[slot] = tl.ptr[i];
        table.numel[slot] = tl.numel[i];
        table.first_block[slot] = first_block[size_t(i)];
      },
      [&](int b, int slot, int64_t chunk) {
        table.block_tensor[b] = uint8_t(slot);
        table.block_chunk[b] = int32_t(chunk);
      },
      [&](int, int blocks) {
        norm_partials_kernel<K, T><<<blocks, kNormThreads, 0, stream>>>(table, p, partials);
        FT_CUDA_CHECK(cudaGetLastError());
      });
  norm_final_kernel<K><<<1, kFinalLanes, 0, stream>>>(partials, nblocks, p, out);
  FT_CUDA_CHECK(cudaGetLastError());
  if (partials != nullptr) {
    scratch.ptr = nullptr;
    FT_CUDA_CHECK(cudaFreeAsync(partials, stream));
  }
}

template <typename T>
void norm_dispatch(const TensorList& tl, double p, double* out, cudaStream_t stream) {
  with_norm_kind(p, [&](auto v) { norm_typed<decltype(v)::kKind, T>(tl, p, out, stream); });
}

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

}  // namespace

void global_norm(const TensorList& tl, DType dt, double norm_type, double* out, void* stream) {
  dt == DType::F32 ? norm_dispatch<float>(tl, norm_type, out, as_stream(stream))
                   : norm_dispatch<double>(tl, norm_type, out, as_stream(stream));
}

void clip_by_norm(const TensorList& tl, DType dt, const double* total_norm, double max_norm,
                  void* stream) {
  dt == DType::F32
      ? multi_tensor_apply(tl, ClipByNormOp<float>{total_norm, max_norm}, as_stream(stream))
      : multi_tensor_apply(tl, ClipByNormOp<double>{total_norm, max_norm}, as_stream(stream));
}

void scale(const TensorList& tl, DType dt, double coef, void* stream) {
  dt == DType::F32 ? multi_tensor_apply(tl, ScaleOp<float>{float(coef)}, as_stream(stream))
                   : multi_tensor_apply(tl, ScaleOp<double>{coef}, as_stream(stream));
}

void clamp(const TensorList& tl, DType dt, double lo, double hi, void* stream) {
  dt == DType::F32
      ? multi_tensor_apply(tl, ClampOp<float>{float(lo), float(hi)}, as_stream(stream))
      : multi_tensor_apply(tl, ClampOp<double>{lo, hi}, as_stream(stream));
}

}  // namespace fusedtrain::cuda

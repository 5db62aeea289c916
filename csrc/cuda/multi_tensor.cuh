// Multi-tensor apply on the GPU: one kernel updates a whole list of tensors,
// one thread block per chunk of 65536 elements, the chunk table
// (fusedtrain/multi_tensor.h) passed by value as the kernel argument.
//
// An Op describes one element update over Op::kDepth buffers:
//   using value_type = T;                 // float or double
//   static constexpr int kDepth;          // buffers per tensor (param, grad, states...)
//   static constexpr bool reads(int k);   // buffer k is loaded
//   static constexpr bool writes(int k);  // buffer k is stored
//   __host__ __device__ void operator()(T (&x)[kDepth]) const;  // updates x in registers
// Buffers that are not read start at 0 in x; buffers that are not written
// are never stored (the gradient stays read-only).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda/check.cuh"
#include "fusedtrain/multi_tensor.h"

namespace fusedtrain::cuda {

constexpr int kBlockThreads = 512;
constexpr int kIlp = 4;        // elements in flight per thread on the scalar path
constexpr int kVecBytes = 16;  // one 128-bit load / store per buffer on the vector path

template <typename T>
struct alignas(kVecBytes) Vec {
  static constexpr int kWidth = kVecBytes / int(sizeof(T));
  T v[kWidth];
};

// ---------------------------------------------------------------------------
// CUDA kernels
// ---------------------------------------------------------------------------

// Thread `thread` of `threads` in block `block` of a launch: its share of
// chunk table.block_chunk[block] of the tensor in slot table.block_tensor[block],
// i.e. of elements [chunk * chunk_size, min(.. + chunk_size, numel)) of each
// of its kDepth buffers; the block's threads together update each element
// exactly once. When every buffer of the chunk starts on a 16-byte boundary
// the body runs on 16-byte vectors (4 floats / 2 doubles per load) and the
// ragged end of the chunk element by element; otherwise the whole chunk runs
// element by element, kIlp elements per thread in flight. Both paths call
// the same Op, so results do not depend on the path. Host and device code:
// the kernel below is its only caller on the GPU, and a host loop over blocks
// and threads can run it to check the indexing without one.
template <class Op>
__host__ __device__ __forceinline__ void multi_tensor_block(
    const mta::ChunkTable<Op::kDepth>& table, const int64_t chunk_size, const Op& op,
    const int block, const int thread, const int threads) {
  using T = typename Op::value_type;
  constexpr int D = Op::kDepth;
  constexpr int W = Vec<T>::kWidth;

  const int slot = table.block_tensor[block];
  const int64_t begin = int64_t(table.block_chunk[block]) * chunk_size;
  const int64_t remaining = table.numel[slot] - begin;
  const int64_t n = remaining < chunk_size ? remaining : chunk_size;  // > 0 by construction

  T* ptr[D];
  bool aligned = true;
#pragma unroll
  for (int k = 0; k < D; ++k) {
    ptr[k] = static_cast<T*>(table.addr[k][slot]) + begin;
    aligned = aligned && reinterpret_cast<uintptr_t>(ptr[k]) % kVecBytes == 0;
  }

  int64_t done = 0;
  if (aligned) {
    const int64_t nvec = n / W;
    for (int64_t j = thread; j < nvec; j += threads) {
      Vec<T> r[D];
#pragma unroll
      for (int k = 0; k < D; ++k)
        if (Op::reads(k)) r[k] = reinterpret_cast<const Vec<T>*>(ptr[k])[j];
#pragma unroll
      for (int e = 0; e < W; ++e) {
        T x[D];
#pragma unroll
        for (int k = 0; k < D; ++k) x[k] = Op::reads(k) ? r[k].v[e] : T(0);
        op(x);
#pragma unroll
        for (int k = 0; k < D; ++k)
          if (Op::writes(k)) r[k].v[e] = x[k];
      }
#pragma unroll
      for (int k = 0; k < D; ++k)
        if (Op::writes(k)) reinterpret_cast<Vec<T>*>(ptr[k])[j] = r[k];
    }
    done = nvec * W;
  }

  // element by element: the tail of the vector path, or the whole chunk
  const int64_t stride = int64_t(threads) * kIlp;
  for (int64_t base = done; base < n; base += stride) {
    T x[kIlp][D];
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int64_t i = base + thread + int64_t(u) * threads;
#pragma unroll
      for (int k = 0; k < D; ++k) x[u][k] = (Op::reads(k) && i < n) ? ptr[k][i] : T(0);
    }
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int64_t i = base + thread + int64_t(u) * threads;
      if (i < n) {
        op(x[u]);
#pragma unroll
        for (int k = 0; k < D; ++k)
          if (Op::writes(k)) ptr[k][i] = x[u][k];
      }
    }
  }
}

// An Op may carry `const float* found_inf` (a device pointer or null): when
// it points at a nonzero value (inf or NaN seen upstream) every block returns
// before touching memory, so the launch changes nothing and nothing waits
// for the flag on the host.
template <class Op, class = void>
struct HasFoundInf : std::false_type {};
template <class Op>
struct HasFoundInf<Op, std::void_t<decltype(std::declval<const Op&>().found_inf)>>
    : std::true_type {};

template <class Op>
__device__ __forceinline__ bool skip_launch(const Op& op) {
  if constexpr (HasFoundInf<Op>::value) {
    return op.found_inf != nullptr && *op.found_inf != 0.0f;
  } else {
    return false;
  }
}

// One block per table entry; the table arrives by value in the parameter
// space (__grid_constant__: read in place, never copied to local memory).
template <class Op>
__global__ void __launch_bounds__(kBlockThreads)
    multi_tensor_kernel(const __grid_constant__ mta::ChunkTable<Op::kDepth> table,
                        const int64_t chunk_size, const Op op) {
  if (skip_launch(op)) return;
  multi_tensor_block(table, chunk_size, op, int(blockIdx.x), int(threadIdx.x), int(blockDim.x));
}

// ---------------------------------------------------------------------------
// kernel launchers
// ---------------------------------------------------------------------------

// Chunk indices are stored as int32: raises for a tensor with more chunks.
inline void require_int32_chunks(const TensorList& tl) {
  for (int64_t i = 0; i < tl.n; ++i)
    if (tl.numel[i] / mta::kChunkSize >= INT32_MAX)
      throw std::invalid_argument("array " + std::to_string(i) + " has too many elements (" +
                                  std::to_string(tl.numel[i]) + ") for one kernel");
}

// Runs `op` over every element of every tensor of `tl` (tl.slots must be
// Op::kDepth): one launch per chunk table, all on `stream`, none waited for.
template <class Op>
void multi_tensor_apply(const TensorList& tl, const Op& op, cudaStream_t stream) {
  constexpr int D = Op::kDepth;
  using Table = mta::ChunkTable<D>;
  static_assert(sizeof(Table) + sizeof(int64_t) + sizeof(Op) <= mta::kKernelParamBytes,
                "kernel arguments over the 4 KiB limit");
  static_assert(mta::kChunkSize % Vec<typename Op::value_type>::kWidth == 0);
  if (tl.slots != D)
    throw std::logic_error("multi_tensor_apply: expected " + std::to_string(D) +
                           " buffers per tensor, received " + std::to_string(tl.slots));
  require_int32_chunks(tl);

  Table table{};  // the kernel argument, copied at each launch (unused entries zero)
  mta::plan_launches(
      tl.numel, tl.n, mta::kChunkSize, Table::kMaxTensors, mta::kMaxBlocks,
      [&](int slot, int64_t i) {
        for (int k = 0; k < D; ++k) table.addr[k][slot] = tl.ptr[i * D + k];
        table.numel[slot] = tl.numel[i];
      },
      [&](int b, int slot, int64_t chunk) {
        table.block_tensor[b] = uint8_t(slot);
        table.block_chunk[b] = int32_t(chunk);
      },
      [&](int, int blocks) {
        multi_tensor_kernel<Op><<<blocks, kBlockThreads, 0, stream>>>(table, mta::kChunkSize, op);
        FT_CUDA_CHECK(cudaGetLastError());
      });
}

}  // namespace fusedtrain::cuda

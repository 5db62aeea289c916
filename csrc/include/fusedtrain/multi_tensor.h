// The multi-tensor contract between the bindings and the kernels, the same
// for g++ (cpu/, bind/) and nvcc (cuda/): the list of tensors a call steps,
// the slots of each optimizer's buffers in that list, and the storage layout
// of a step. Then, for the GPU, how such a list is cut into chunks and the
// chunks packed into kernel launches (the scheme of apex's and PyTorch's
// multi_tensor_apply).
//
// Every launch gets a ChunkTable by value as its kernel argument: the
// addresses and element counts of the tensors it touches (at most
// kMaxTensors of them) and, per thread block, which tensor and which chunk
// of it the block updates (at most kMaxBlocks blocks). A tensor whose chunks
// do not all fit in one launch is carried over into the next one, where it
// takes slot 0 again. Zero-size tensors get no slot and no block.
//
// Plain C++ (no CUDA types): compiled by g++ for the _core binding that the
// tests call (_core.chunk_table) and by nvcc for the kernels, so what the
// tests verify is the table the GPU receives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fusedtrain/dtype.h"

namespace fusedtrain {

// ---------------------------------------------------------------------------
// the list of one call and the slots of its buffers
// ---------------------------------------------------------------------------

// n tensors with `slots` buffers each (param, grad, states...): ptr[i * slots
// + k] is buffer k of tensor i, which holds numel[i] elements and covers the
// range [offsets[i], offsets[i + 1]) of the concatenation of all the call's
// tensors (the CPU splits that range over threads; the GPU chunks each
// tensor). Host memory on the CPU, device memory on the GPU; the tables
// themselves are host memory, owned by the binding for the call's duration.
struct TensorList {
  int64_t n = 0;
  int slots = 0;
  void* const* ptr = nullptr;
  const int64_t* offsets = nullptr;  // n + 1 entries
  const int64_t* numel = nullptr;    // n entries

  int64_t total() const { return offsets[n]; }
  template <typename T>
  T* get(int64_t i, int k) const {
    return static_cast<T*>(ptr[i * slots + k]);
  }
};

// Buffer slots of each optimizer's TensorList, in this order. Optional state
// buffers take the next slot only when their variant is on; for float16 /
// bfloat16 params the float32 master weights take the last slot.
namespace adam_slot { enum : int { kParam, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq }; }
namespace sgd_slot { enum : int { kParam, kGrad, kMomentumBuffer }; }
namespace rmsprop_slot { enum : int { kParam, kGrad, kSquareAvg, kOptional }; }  // [grad_avg], [momentum_buffer]
namespace adagrad_slot { enum : int { kParam, kGrad, kSum }; }

// The storage of one optimizer step: param (and grad) dtype, state dtype, and
// for narrow params the rounding of the parameter and its Philox stream.
struct StepLayout {
  DType param = DType::F32;
  DType state = DType::F32;
  bool stochastic = false;
  uint64_t seed = 0, offset = 0;
  // GPU only: a device pointer to one float32, or null. When it points at a
  // nonzero value every block returns before touching memory (read in the
  // kernel: no sync). The CPU binding reads its found_inf on the host and
  // does not call the kernel, so on the CPU this stays null.
  const float* found_inf = nullptr;
};

}  // namespace fusedtrain

// ---------------------------------------------------------------------------
// the GPU's chunk table
// ---------------------------------------------------------------------------
namespace fusedtrain::mta {

// Elements per chunk: one thread block updates one chunk.
constexpr int64_t kChunkSize = 65536;

// A kernel's arguments must fit in 4 KiB (the classic limit, which every
// architecture and toolkit accepts). The table takes all of it but
// kReservedParamBytes, which holds the other arguments (the chunk size and the
// optimizer's per-step scalars: at most 10 doubles today).
constexpr int kKernelParamBytes = 4096;
constexpr int kReservedParamBytes = 256;
constexpr int kMaxBlocks = 320;  // blocks per launch

// Tensors per launch for `depth` buffers per tensor (param, grad, states...):
// whatever the addresses and counts can fill after the block entries. A table
// with one more 8-byte word per tensor than the address of each buffer and
// the count (e.g. each tensor's first element index) has the capacity of
// depth + 1.
constexpr int max_tensors_for(int depth) {
  return int((kKernelParamBytes - kReservedParamBytes -
              kMaxBlocks * (sizeof(int32_t) + sizeof(uint8_t))) /
             ((depth + 1) * sizeof(int64_t)));
}

// The kernel argument of one launch. Block b updates chunk block_chunk[b] of
// the tensor in slot block_tensor[b]: elements [chunk * kChunkSize,
// min((chunk + 1) * kChunkSize, numel[slot])) of each of its Depth buffers.
template <int Depth>
struct ChunkTable {
  static constexpr int kDepth = Depth;
  static constexpr int kMaxTensors = max_tensors_for(Depth);
  void* addr[Depth][kMaxTensors];  // addr[k][slot]: buffer k of the tensor in `slot`
  int64_t numel[kMaxTensors];
  int32_t block_chunk[kMaxBlocks];
  uint8_t block_tensor[kMaxBlocks];  // a slot, < kMaxTensors <= 256
};

// Depth 2 (SGD) to 5 (AMSGrad Adam); 1 for a single-buffer op.
static_assert(sizeof(ChunkTable<1>) <= kKernelParamBytes - kReservedParamBytes);
static_assert(sizeof(ChunkTable<2>) <= kKernelParamBytes - kReservedParamBytes);
static_assert(sizeof(ChunkTable<3>) <= kKernelParamBytes - kReservedParamBytes);
static_assert(sizeof(ChunkTable<4>) <= kKernelParamBytes - kReservedParamBytes);
static_assert(sizeof(ChunkTable<5>) <= kKernelParamBytes - kReservedParamBytes);
static_assert(ChunkTable<1>::kMaxTensors <= 256, "slots are stored as uint8_t");
static_assert(ChunkTable<5>::kMaxTensors >= 32, "too few tensors per launch");
static_assert(kChunkSize % 16 == 0, "chunks must start on a 16-byte vector boundary");

// Packs the chunks of tensors 0..n-1 (numel[i] elements each, chunks of
// chunk_size elements) into launches of at most max_tensors tensors and
// max_blocks blocks, in order: tensor by tensor, chunk by chunk. Calls
//   on_tensor(slot, i)           tensor i takes `slot` of the current launch
//   on_block(b, slot, chunk)     block b of the current launch: that chunk of that slot
//   on_launch(tensors, blocks)   the current launch is complete
// on_launch comes when the blocks or the tensor slots are full, and once at
// the end; a tensor cut by a full launch takes slot 0 of the next one.
// Deterministic: the result depends on the arguments only.
// Throws std::invalid_argument for a non-positive chunk size or capacity or
// a negative element count.
template <class OnTensor, class OnBlock, class OnLaunch>
void plan_launches(const int64_t* numel, int64_t n, int64_t chunk_size, int max_tensors,
                   int max_blocks, OnTensor&& on_tensor, OnBlock&& on_block,
                   OnLaunch&& on_launch) {
  if (chunk_size <= 0)
    throw std::invalid_argument("chunk_size: expected a positive element count, received " +
                                std::to_string(chunk_size));
  if (max_tensors <= 0)
    throw std::invalid_argument("max_tensors: expected a positive count, received " +
                                std::to_string(max_tensors));
  if (max_blocks <= 0)
    throw std::invalid_argument("max_blocks: expected a positive count, received " +
                                std::to_string(max_blocks));
  for (int64_t i = 0; i < n; ++i)
    if (numel[i] < 0)
      throw std::invalid_argument("sizes[" + std::to_string(i) +
                                  "]: expected an element count >= 0, received " +
                                  std::to_string(numel[i]));

  int tensors = 0;  // slots used in the current launch
  int blocks = 0;   // blocks used in the current launch
  for (int64_t i = 0; i < n; ++i) {
    if (numel[i] == 0) continue;
    const int64_t chunks = numel[i] / chunk_size + (numel[i] % chunk_size != 0);
    const int slot = tensors++;
    on_tensor(slot, i);
    int cur_slot = slot;
    for (int64_t c = 0; c < chunks; ++c) {
      on_block(blocks++, cur_slot, c);
      const bool last_chunk = c + 1 == chunks;
      if (blocks == max_blocks || (last_chunk && tensors == max_tensors)) {
        on_launch(tensors, blocks);
        blocks = 0;
        tensors = 0;
        if (!last_chunk) {  // carry the rest of tensor i over
          cur_slot = tensors++;
          on_tensor(cur_slot, i);
        }
      }
    }
  }
  if (blocks > 0) on_launch(tensors, blocks);
}

}  // namespace fusedtrain::mta

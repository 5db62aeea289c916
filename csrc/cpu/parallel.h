// Multi-tensor apply on the CPU: one parallel region over a whole list of
// arrays. The total element count (not the list of arrays) is split into one
// contiguous range per thread, so 200 small arrays cost what one large one does.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "fusedtrain/multi_tensor.h"  // TensorList

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define FT_HAS_MXCSR 1
#endif

namespace fusedtrain::cpu {

// Kernel thread count (fusedtrain.set_num_threads); defined in runtime.cpp.
int num_threads();
void set_num_threads(int n);

// Whether the optimizer loops flush subnormal numbers to zero
// (fusedtrain.set_flush_denormal; off by default). Optimizer states of weights
// whose gradient stays 0 decay geometrically into the subnormal range, where
// x86 arithmetic is 10-100x slower; flushed, they become 0 instead. Off by
// default: flushing changes results where a subnormal meets a division (eps
// = 0), and torch.optim does not flush.
bool flush_denormal();
void set_flush_denormal(bool on);

// Sets FTZ and DAZ on this thread for its lifetime when flushing is on, and
// restores the previous mode.
class DenormalGuard {
 public:
  DenormalGuard() {
#ifdef FT_HAS_MXCSR
    saved_ = _mm_getcsr();
    if (flush_denormal()) _mm_setcsr(saved_ | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
#endif
  }
  ~DenormalGuard() {
#ifdef FT_HAS_MXCSR
    _mm_setcsr(saved_);
#endif
  }
  DenormalGuard(const DenormalGuard&) = delete;
  DenormalGuard& operator=(const DenormalGuard&) = delete;

 private:
  unsigned saved_ = 0;
};

// Below this many elements per thread a second thread costs more than it saves.
constexpr int64_t kMinElementsPerThread = 32768;
// Thread ranges start on multiples of 16 elements (64 bytes for float32).
constexpr int64_t kRangeAlign = 16;

inline int threads_for(int64_t total) {
  const int64_t by_size = std::max<int64_t>(1, total / kMinElementsPerThread);
  return int(std::min<int64_t>(num_threads(), by_size));
}

inline int64_t range_start(int64_t total, int parts, int k) {
  if (k >= parts) return total;
  const int64_t x = int64_t((__int128)total * k / parts);
  return x - x % kRangeAlign;
}

// Calls fn(i, begin, end) for consecutive element ranges [begin, end) of
// tensor i, each element exactly once. Results cannot depend on the thread
// count: every element is updated by the same per-element math (the build
// disables FP contraction, so the SIMD body and the scalar tail round alike).
template <class Fn>
void multi_tensor_apply(const TensorList& tl, Fn&& fn) {
  const int64_t total = tl.total();
  if (total == 0) return;
  const int nt = threads_for(total);
  auto run = [&](int part, int parts) {
    const DenormalGuard mode;  // every thread alike: results do not depend on the split
    int64_t lo = range_start(total, parts, part);
    const int64_t hi = range_start(total, parts, part + 1);
    if (lo >= hi) return;
    int64_t i = std::upper_bound(tl.offsets, tl.offsets + tl.n + 1, lo) - tl.offsets - 1;
    for (; lo < hi && i < tl.n; ++i) {
      const int64_t end = std::min(hi, tl.offsets[i + 1]);
      if (end > lo) fn(i, lo - tl.offsets[i], end - tl.offsets[i]);
      lo = std::max(lo, end);
    }
  };
  if (nt <= 1) {
    run(0, 1);
    return;
  }
#pragma omp parallel num_threads(nt)
  run(omp_get_thread_num(), omp_get_num_threads());
}

}  // namespace fusedtrain::cpu

// Gradient clipping on the CPU. The global norm runs step 2 of the blocked
// reduction of fusedtrain/norm_math.h over whole norm blocks, split between
// threads by block (never inside one), so every partial is computed alike
// whatever the thread count; step 3 folds the partials on the calling thread.
// One pass over memory; the lane loop is compiled for AVX-512, AVX2 and
// baseline (FT_CLONES) and vectorises across the lanes.
#include "cpu/norm_cpu.h"

#include <algorithm>
#include <vector>

#include "cpu/simd.h"

namespace fusedtrain::cpu {

namespace {

// ---------------------------------------------------------------------------
// inner loops
// ---------------------------------------------------------------------------

// Partials of consecutive norm blocks: x is (n,) from the start of a block;
// block k covers x[k * kNormBlock, min((k + 1) * kNormBlock, n)) and its
// partial goes to out[k].
template <NormKind K, typename T>
FT_CLONES void block_partials(const T* __restrict x, int64_t n, double p, double* __restrict out) {
  for (int64_t k = 0; k * kNormBlock < n; ++k) {
    const T* __restrict xb = x + k * kNormBlock;
    const int64_t m = std::min(kNormBlock, n - k * kNormBlock);
    double acc[kNormLanes] = {};  // 0 is the identity of the sum and of max |x|
    const int64_t full = m - m % kNormLanes;
    for (int64_t i = 0; i < full; i += kNormLanes)
      for (int l = 0; l < kNormLanes; ++l)
        acc[l] = norm_combine<K>(acc[l], norm_term<K>(double(xb[i + l]), p));
    for (int64_t i = full; i < m; ++i)
      acc[i - full] = norm_combine<K>(acc[i - full], norm_term<K>(double(xb[i]), p));
    out[k] = fold_lanes<K>(acc, kNormLanes);
  }
}

template <typename T>
FT_CLONES void scale_range(T* __restrict x, int64_t n, const T coef) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * coef;
}

template <typename T>
FT_CLONES void clamp_range(T* __restrict x, int64_t n, const T lo, const T hi) {
  for (int64_t i = 0; i < n; ++i) x[i] = clamp_value(x[i], lo, hi);
}

// ---------------------------------------------------------------------------
// drivers
// ---------------------------------------------------------------------------

// Reused across calls on one thread: no allocation in steady state.
struct NormScratch {
  std::vector<int64_t> block_offsets;  // n + 1: first block of tensor i
  std::vector<double> partials;        // one per block
  std::vector<double> lanes;           // kFinalLanes
};
NormScratch& norm_scratch() {
  thread_local NormScratch s;
  return s;
}

template <NormKind K, typename T>
double norm_typed(const TensorList& tl, double p) {
  NormScratch& sc = norm_scratch();
  sc.block_offsets.resize(size_t(tl.n) + 1);
  sc.block_offsets[0] = 0;
  for (int64_t i = 0; i < tl.n; ++i) {
    const int64_t numel = tl.offsets[i + 1] - tl.offsets[i];
    sc.block_offsets[i + 1] = sc.block_offsets[i] + (numel + kNormBlock - 1) / kNormBlock;
  }
  const int64_t nblocks = sc.block_offsets[tl.n];
  sc.partials.resize(size_t(nblocks));
  const int64_t* bo = sc.block_offsets.data();
  double* partials = sc.partials.data();

  // threads take contiguous runs of whole blocks
  auto run = [&](int part, int parts) {
    const int64_t lo = nblocks * part / parts, hi = nblocks * (part + 1) / parts;
    if (lo >= hi) return;
    int64_t i = std::upper_bound(bo, bo + tl.n + 1, lo) - bo - 1;
    for (int64_t b = lo; b < hi; ++i) {
      const int64_t end = std::min(hi, bo[i + 1]);
      if (end <= b) continue;  // an empty tensor has no blocks
      const int64_t first = (b - bo[i]) * kNormBlock;
      const int64_t numel = tl.offsets[i + 1] - tl.offsets[i];
      const int64_t last = std::min(numel, (end - bo[i]) * kNormBlock);
      block_partials<K, T>(tl.get<T>(i, 0) + first, last - first, p, partials + b);
      b = end;
    }
  };
  const int nt = threads_for(tl.total());  // the optimizer loops' rule (parallel.h)
  if (nt <= 1) {
    run(0, 1);
  } else {
#pragma omp parallel num_threads(nt)
    run(omp_get_thread_num(), omp_get_num_threads());
  }

  sc.lanes.assign(kFinalLanes, 0.0);
  double* lanes = sc.lanes.data();
  for (int64_t b = 0; b < nblocks; ++b)
    lanes[b % kFinalLanes] = norm_combine<K>(lanes[b % kFinalLanes], partials[b]);
  return norm_finish<K>(fold_lanes<K>(lanes, kFinalLanes), p);
}

template <typename T>
double norm_dispatch(const TensorList& tl, double p) {
  return with_norm_kind(p, [&](auto v) { return norm_typed<decltype(v)::kKind, T>(tl, p); });
}

template <typename T>
void scale_typed(const TensorList& tl, double coef) {
  const T c = T(coef);
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    scale_range<T>(tl.get<T>(i, 0) + b, e - b, c);
  });
}

template <typename T>
void clamp_typed(const TensorList& tl, double lo, double hi) {
  const T l = T(lo), h = T(hi);
  multi_tensor_apply(tl, [&](int64_t i, int64_t b, int64_t e) {
    clamp_range<T>(tl.get<T>(i, 0) + b, e - b, l, h);
  });
}

}  // namespace

double global_norm(const TensorList& tl, DType dt, double p) {
  return dt == DType::F32 ? norm_dispatch<float>(tl, p) : norm_dispatch<double>(tl, p);
}

void scale(const TensorList& tl, DType dt, double coef) {
  dt == DType::F32 ? scale_typed<float>(tl, coef) : scale_typed<double>(tl, coef);
}

void clamp(const TensorList& tl, DType dt, double lo, double hi) {
  dt == DType::F32 ? clamp_typed<float>(tl, lo, hi) : clamp_typed<double>(tl, lo, hi);
}

}  // namespace fusedtrain::cpu

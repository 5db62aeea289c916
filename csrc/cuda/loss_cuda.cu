// Loss and dropout kernels on the GPU. The per-row and per-element math is
// loss_math.h's (ce_row, ce_grad, elementwise_loss, dropout_apply) and the
// mask is philox.h's, the functions the CPU loops (cpu/loss_cpu.cpp) call;
// nvcc runs with --fmad=false, so element results round as on the CPU.
//
// Reductions are deterministic: per-row (cross-entropy) or per-block (BCE,
// MSE, 4096 elements as on the CPU) sums go to the workspace, then one block
// of kReduceThreads threads adds them in a fixed order (thread t takes
// elements t, t + 1024, ... in turn, then CUB's block reduction, whose tree
// is fixed for a fixed block size). No floating-point atomics anywhere.
//
// Workspace header (8-byte slots):
//   [0] first bad label row (uint64; all ones when none)
//   [1] D, the sum of w_y over the rows not ignored (cross-entropy)
//   [2] the reduced loss
//   [3] W, the sum of the class weights (cross-entropy with weights)
#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

#include <climits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/check.cuh"
#include "cuda/loss_cuda.h"
#include "fusedtrain/loss_math.h"
#include "fusedtrain/philox.h"

namespace fusedtrain::cuda {

namespace {

namespace hdr { enum : int { kBadRow, kDenom, kLoss, kWeightTotal }; }
constexpr unsigned long long kNoBadRow = ~0ull;

// ---------------------------------------------------------------------------
// CUDA kernels
// ---------------------------------------------------------------------------

// dst = (sum of v[0..len)) / divisor, divisor = *div_ptr when given, else
// div; summed in double in a fixed order by one block of kReduceThreads.
template <typename Src>
__global__ void __launch_bounds__(kReduceThreads)
    fixed_sum_kernel(const Src* v, int64_t len, double* dst, const double* div_ptr, double div) {
  using Reduce = cub::BlockReduce<double, kReduceThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < len; i += kReduceThreads) s += double(v[i]);
  const double total = Reduce(tmp).Sum(s);
  if (threadIdx.x == 0) *dst = total / (div_ptr != nullptr ? *div_ptr : div);
}

// Labels (n,) of type L to int64 row indices (-1 for ignore_index) and the
// row's class weight w_y (0 for ignored rows; 1 without weights). A label
// outside [0, c) that is not ignore_index records its row in header[kBadRow]
// (the smallest such row wins: an integer atomicMin, order-independent).
template <typename L>
__global__ void ce_labels_kernel(const L* labels, int64_t n, int64_t c, int64_t ignore_index,
                                 const void* weight, bool weight_f32, int64_t* index,
                                 double* row_w, unsigned long long* bad_row) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const L l = labels[i];
    // unsigned 64-bit labels above INT64_MAX are out of range (as on the CPU)
    const bool fits = std::is_signed_v<L> || sizeof(L) < 8 || uint64_t(l) <= uint64_t(LLONG_MAX);
    const int64_t y = int64_t(l);
    if (fits && y == ignore_index) {
      index[i] = -1;
      row_w[i] = 0.0;
    } else if (fits && y >= 0 && y < c) {
      index[i] = y;
      row_w[i] = weight == nullptr ? 1.0
                 : weight_f32      ? double(static_cast<const float*>(weight)[y])
                                   : static_cast<const double*>(weight)[y];
    } else {
      index[i] = -1;
      row_w[i] = 0.0;
      atomicMin(bad_row, static_cast<unsigned long long>(i));
    }
  }
}

// max(a, b) as the CPU's row_max folds it (x > m ? x : m): a NaN never wins,
// so the result does not depend on the order.
template <typename T>
struct RowMax {
  __device__ T operator()(const T& a, const T& b) const { return b > a ? b : a; }
};

// One block per row (grid-stride over rows): x, g are (n, c) (g may be x:
// every thread reads its elements before it writes them, after the row's
// reductions), w is (c,), index and row_w (n,) from ce_labels_kernel,
// loss_rows (n,) of T (PerRow) or row_loss (n,) of double. The header holds
// D and W (from fixed_sum_kernel) and the label verdict: after a bad label
// nothing is written.
template <typename T, Smoothing SM, ClassWeights CW, bool PerRow>
__global__ void __launch_bounds__(kCeThreads)
    ce_rows_kernel(const T* x_all, T* g_all, const T* w, const int64_t* index, T* loss_rows,
                   double* row_loss, const double* header, int64_t n, int64_t c,
                   double label_smoothing, Reduction reduction) {
  if (reinterpret_cast<const unsigned long long*>(header)[hdr::kBadRow] != kNoBadRow) return;
  const double wt = CW == ClassWeights::On ? header[hdr::kWeightTotal] : double(c);
  const CeScalars s = make_ce_scalars(label_smoothing, c, wt, reduction, header[hdr::kDenom]);
  const T coef_w = T(s.eps_over_c * s.scale);

  using MaxReduce = cub::BlockReduce<T, kCeThreads>;
  using SumReduce = cub::BlockReduce<double, kCeThreads>;
  __shared__ typename MaxReduce::TempStorage max_tmp;
  __shared__ typename SumReduce::TempStorage sum_tmp;
  __shared__ T row_m, coef_e, coef_y;

  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* x = x_all + row * c;
    T* g = g_all + row * c;
    const int64_t y = index[row];
    if (y < 0) {  // ignore_index: zero gradient, zero loss
      for (int64_t k = threadIdx.x; k < c; k += kCeThreads) g[k] = T(0);
      if (threadIdx.x == 0) {
        if constexpr (PerRow) {
          loss_rows[row] = T(0);
        } else {
          row_loss[row] = 0.0;
        }
      }
      continue;  // uniform over the block: no barrier is skipped by some threads only
    }
    // m = max x
    T m = -INFINITY;
    for (int64_t k = threadIdx.x; k < c; k += kCeThreads) m = RowMax<T>()(m, x[k]);
    m = MaxReduce(max_tmp).Reduce(m, RowMax<T>());
    if (threadIdx.x == 0) row_m = m;
    __syncthreads();
    m = row_m;
    // S = sum exp(x - m); (smoothing) sum w (x - m)
    double se = 0.0, wxs = 0.0;
    for (int64_t k = threadIdx.x; k < c; k += kCeThreads) {
      const T xs = x[k] - m;
      se += double(ft_exp_nonpos(xs));
      if constexpr (SM == Smoothing::On) wxs += double(CW == ClassWeights::On ? w[k] * xs : xs);
    }
    se = SumReduce(sum_tmp).Sum(se);
    if constexpr (SM == Smoothing::On) {
      __syncthreads();  // sum_tmp is reused
      wxs = SumReduce(sum_tmp).Sum(wxs);
    }
    if (threadIdx.x == 0) {
      const double w_label = CW == ClassWeights::On ? double(w[y]) : 1.0;
      const CeRow<T> r = ce_row<T>(se, ft_log_poly(se), T(x[y] - m), wxs, w_label, s);
      coef_e = r.coef_e;
      coef_y = r.coef_y;
      if constexpr (PerRow) {
        loss_rows[row] = T(r.loss);
      } else {
        row_loss[row] = r.loss;
      }
    }
    __syncthreads();
    // g = e * coef_e - coef_w * w; g_y -= coef_y (each thread its own elements)
    const T ce = coef_e, cy = coef_y;
    for (int64_t k = threadIdx.x; k < c; k += kCeThreads) {
      T v = ce_grad<SM>(ft_exp_nonpos(T(x[k] - m)), CW == ClassWeights::On ? w[k] : T(1), ce,
                        coef_w);
      if (k == y) v = v - cy;
      g[k] = v;
    }
    __syncthreads();  // row_m, coef_e, coef_y and the temp storage are reused
  }
}

// Element-wise loss over blocks of kElemBlock elements (grid-stride over
// blocks): grad and, PerElem, the loss of each element; otherwise the block's
// loss sum (double) to partials[block].
template <Elementwise K, bool PerElem, typename T>
__global__ void __launch_bounds__(kElemThreads)
    elementwise_kernel(const T* a, const T* b, T* grad, T* loss, double* partials, int64_t n,
                       T scale) {
  using SumReduce = cub::BlockReduce<double, kElemThreads>;
  __shared__ typename SumReduce::TempStorage tmp;
  const int64_t nblocks = elem_blocks(n);
  for (int64_t blk = blockIdx.x; blk < nblocks; blk += gridDim.x) {
    const int64_t lo = blk * kElemBlock;
    const int64_t hi = lo + kElemBlock < n ? lo + kElemBlock : n;
    double s = 0.0;
    for (int64_t i = lo + threadIdx.x; i < hi; i += kElemThreads) {
      T l, g;
      elementwise_loss<K>(a[i], b[i], scale, l, g);
      grad[i] = g;
      if constexpr (PerElem) {
        loss[i] = l;
      } else {
        s += double(l);
      }
    }
    if constexpr (!PerElem) {
      s = SumReduce(tmp).Sum(s);
      if (threadIdx.x == 0) partials[blk] = s;
      __syncthreads();  // tmp is reused
    }
  }
}

// Dropout: thread j of the grid-stride loop takes Philox block j, i.e.
// elements 4j .. 4j + 3 (the CPU's stream, philox.h). y may be x.
template <typename T>
__global__ void __launch_bounds__(kDropThreads)
    dropout_kernel(const T* x, T* y, uint8_t* mask, int64_t n, uint64_t seed, uint64_t offset,
                   uint32_t threshold, T scale) {
  const int64_t nb = (n + 3) / 4;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < nb;
       j += int64_t(gridDim.x) * blockDim.x) {
    const Philox4 r = dropout_block(uint64_t(j), seed, offset);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t i = 4 * j + k;
      if (i < n) {
        const bool keep = r.v[k] >= threshold;
        mask[i] = uint8_t(keep);
        y[i] = dropout_apply(x[i], keep, scale);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kDropThreads)
    dropout_backward_kernel(const T* dy, const uint8_t* mask, T* dx, int64_t n, T scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = dropout_apply(dy[i], mask[i] != 0, scale);
}

// ---------------------------------------------------------------------------
// kernel launchers
// ---------------------------------------------------------------------------
cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

double* header_of(void* workspace) { return static_cast<double*>(workspace); }

void launch_fixed_sum_f64(const double* v, int64_t len, double* dst, const double* div_ptr,
                          double div, cudaStream_t st) {
  fixed_sum_kernel<double><<<1, kReduceThreads, 0, st>>>(v, len, dst, div_ptr, div);
  FT_CUDA_CHECK(cudaGetLastError());
}

// The header back on the host, once `stream` has reached this point.
struct Header {
  unsigned long long bad_row;
  double denom, loss, weight_total;
};
LossResult read_back(const void* workspace, cudaStream_t st) {
  Header h{};
  FT_CUDA_CHECK(cudaMemcpyAsync(&h, workspace, sizeof h, cudaMemcpyDeviceToHost, st));
  FT_CUDA_CHECK(cudaStreamSynchronize(st));
  return {h.bad_row == kNoBadRow ? int64_t(-1) : int64_t(h.bad_row), h.loss};
}

template <typename L>
void launch_labels(const CeLaunch& a, bool weight_f32, int64_t* index, double* row_w,
                   cudaStream_t st) {
  const int64_t grid = grid_for(a.n, kDropThreads);
  ce_labels_kernel<L><<<unsigned(grid), kDropThreads, 0, st>>>(
      static_cast<const L*>(a.labels.data), a.n, a.c, a.ignore_index, a.weight, weight_f32, index,
      row_w,
      reinterpret_cast<unsigned long long*>(header_of(a.workspace)) + hdr::kBadRow);
  FT_CUDA_CHECK(cudaGetLastError());
}

void labels_by_type(const CeLaunch& a, bool weight_f32, int64_t* index, double* row_w,
                    cudaStream_t st) {
  switch (a.labels.itemsize * (a.labels.is_signed ? 1 : -1)) {
    case 1: return launch_labels<int8_t>(a, weight_f32, index, row_w, st);
    case 2: return launch_labels<int16_t>(a, weight_f32, index, row_w, st);
    case 4: return launch_labels<int32_t>(a, weight_f32, index, row_w, st);
    case 8: return launch_labels<int64_t>(a, weight_f32, index, row_w, st);
    case -1: return launch_labels<uint8_t>(a, weight_f32, index, row_w, st);
    case -2: return launch_labels<uint16_t>(a, weight_f32, index, row_w, st);
    case -4: return launch_labels<uint32_t>(a, weight_f32, index, row_w, st);
    case -8: return launch_labels<uint64_t>(a, weight_f32, index, row_w, st);
    default:
      throw std::invalid_argument("labels: unsupported integer size " +
                                  std::to_string(a.labels.itemsize));
  }
}

template <typename T, Smoothing SM, ClassWeights CW>
void launch_rows(const CeLaunch& a, const int64_t* index, double* row_loss, cudaStream_t st) {
  const unsigned grid = unsigned(grid_for(a.n, 1));
  const T* x = static_cast<const T*>(a.logits);
  T* g = static_cast<T*>(a.out);
  const T* w = static_cast<const T*>(a.weight);
  const double* h = header_of(a.workspace);
  if (a.reduction == Reduction::None) {
    ce_rows_kernel<T, SM, CW, true><<<grid, kCeThreads, 0, st>>>(
        x, g, w, index, static_cast<T*>(a.loss_rows), row_loss, h, a.n, a.c, a.label_smoothing,
        a.reduction);
  } else {
    ce_rows_kernel<T, SM, CW, false><<<grid, kCeThreads, 0, st>>>(
        x, g, w, index, nullptr, row_loss, h, a.n, a.c, a.label_smoothing, a.reduction);
  }
  FT_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void rows_by_variant(const CeLaunch& a, const int64_t* index, double* row_loss, cudaStream_t st) {
  const bool sm = a.label_smoothing != 0.0, cw = a.weight != nullptr;
  using S = Smoothing;
  using W = ClassWeights;
  if (sm) {
    cw ? launch_rows<T, S::On, W::On>(a, index, row_loss, st)
       : launch_rows<T, S::On, W::Off>(a, index, row_loss, st);
  } else {
    cw ? launch_rows<T, S::Off, W::On>(a, index, row_loss, st)
       : launch_rows<T, S::Off, W::Off>(a, index, row_loss, st);
  }
}

template <Elementwise K, typename T>
LossResult elementwise_typed(const void* a_, const void* b_, void* grad_, void* loss_, int64_t n,
                             Reduction r, void* workspace, cudaStream_t st) {
  const T* a = static_cast<const T*>(a_);
  const T* b = static_cast<const T*>(b_);
  T* grad = static_cast<T*>(grad_);
  double* h = header_of(workspace);
  double* partials = h + kLossHeaderSlots;
  const T scale = elementwise_grad_scale<K, T>(r, n);
  const unsigned grid = unsigned(grid_for(elem_blocks(n), 1));
  FT_CUDA_CHECK(cudaMemsetAsync(workspace, 0xFF, 8, st));  // no bad row (no labels here)
  if (n > 0) {
    if (r == Reduction::None) {
      elementwise_kernel<K, true, T>
          <<<grid, kElemThreads, 0, st>>>(a, b, grad, static_cast<T*>(loss_), nullptr, n, scale);
    } else {
      elementwise_kernel<K, false, T>
          <<<grid, kElemThreads, 0, st>>>(a, b, grad, nullptr, partials, n, scale);
    }
    FT_CUDA_CHECK(cudaGetLastError());
  }
  if (r == Reduction::None) {
    FT_CUDA_CHECK(cudaMemsetAsync(h + hdr::kLoss, 0, 8, st));
  } else {
    // n = 0: 0 / 0 = NaN for "mean", as torch (and the CPU path)
    launch_fixed_sum_f64(partials, elem_blocks(n), h + hdr::kLoss, nullptr,
                         r == Reduction::Mean ? double(n) : 1.0, st);
  }
  return read_back(workspace, st);
}

template <typename T>
void dropout_typed(const void* x, void* y, uint8_t* mask, int64_t n, double p, uint64_t seed,
                   uint64_t offset, cudaStream_t st) {
  if (n == 0) return;
  const T scale = T(1.0 / (1.0 - p));
  const int64_t grid = grid_for((n + 3) / 4, kDropThreads);
  dropout_kernel<T><<<unsigned(grid), kDropThreads, 0, st>>>(
      static_cast<const T*>(x), static_cast<T*>(y), mask, n, seed, offset, dropout_threshold(p),
      scale);
  FT_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void dropout_backward_typed(const void* dy, const uint8_t* mask, void* dx, int64_t n, double p,
                            cudaStream_t st) {
  if (n == 0) return;
  const T scale = T(1.0 / (1.0 - p));
  const int64_t grid = grid_for(n, kDropThreads);
  dropout_backward_kernel<T><<<unsigned(grid), kDropThreads, 0, st>>>(
      static_cast<const T*>(dy), mask, static_cast<T*>(dx), n, scale);
  FT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

// ---------------------------------------------------------------------------
// entry points
// ---------------------------------------------------------------------------
LossResult softmax_cross_entropy(const CeLaunch& a, DType dt, void* stream) {
  const cudaStream_t st = as_stream(stream);
  double* h = header_of(a.workspace);
  auto* index = reinterpret_cast<int64_t*>(h + kLossHeaderSlots);
  double* row_w = h + kLossHeaderSlots + a.n;
  double* row_loss = row_w + a.n;
  FT_CUDA_CHECK(cudaMemsetAsync(a.workspace, 0xFF, 8, st));  // no bad row yet
  if (a.n > 0) labels_by_type(a, dt == DType::F32, index, row_w, st);
  // D = sum of w_y (fixed order); W = sum of the class weights
  launch_fixed_sum_f64(row_w, a.n, h + hdr::kDenom, nullptr, 1.0, st);
  if (a.weight != nullptr) {
    if (dt == DType::F32) {
      fixed_sum_kernel<float><<<1, kReduceThreads, 0, st>>>(
          static_cast<const float*>(a.weight), a.c, h + hdr::kWeightTotal, nullptr, 1.0);
    } else {
      fixed_sum_kernel<double><<<1, kReduceThreads, 0, st>>>(
          static_cast<const double*>(a.weight), a.c, h + hdr::kWeightTotal, nullptr, 1.0);
    }
    FT_CUDA_CHECK(cudaGetLastError());
  }
  if (a.n > 0) {
    dt == DType::F32 ? rows_by_variant<float>(a, index, row_loss, st)
                     : rows_by_variant<double>(a, index, row_loss, st);
  }
  if (a.reduction == Reduction::None) {
    FT_CUDA_CHECK(cudaMemsetAsync(h + hdr::kLoss, 0, 8, st));
  } else {
    // sum, or sum / D for "mean" (all rows ignored: 0 / 0 = NaN, as torch)
    launch_fixed_sum_f64(row_loss, a.n, h + hdr::kLoss,
                         a.reduction == Reduction::Mean ? h + hdr::kDenom : nullptr, 1.0, st);
  }
  return read_back(a.workspace, st);
}

LossResult bce_with_logits(const void* x, const void* t, void* grad, void* loss, int64_t n,
                           Reduction r, DType dt, void* workspace, void* stream) {
  return dt == DType::F32
             ? elementwise_typed<Elementwise::Bce, float>(x, t, grad, loss, n, r, workspace,
                                                          as_stream(stream))
             : elementwise_typed<Elementwise::Bce, double>(x, t, grad, loss, n, r, workspace,
                                                           as_stream(stream));
}

LossResult mse(const void* pred, const void* target, void* grad, void* loss, int64_t n,
               Reduction r, DType dt, void* workspace, void* stream) {
  return dt == DType::F32
             ? elementwise_typed<Elementwise::Mse, float>(pred, target, grad, loss, n, r,
                                                          workspace, as_stream(stream))
             : elementwise_typed<Elementwise::Mse, double>(pred, target, grad, loss, n, r,
                                                           workspace, as_stream(stream));
}

std::string label_text(const LabelDesc& labels, int64_t row, void* stream) {
  const cudaStream_t st = as_stream(stream);
  unsigned char raw[8] = {0};
  FT_CUDA_CHECK(cudaMemcpyAsync(raw, static_cast<const char*>(labels.data) + row * labels.itemsize,
                                size_t(labels.itemsize), cudaMemcpyDeviceToHost, st));
  FT_CUDA_CHECK(cudaStreamSynchronize(st));
  return label_bytes_text(raw, labels.itemsize, labels.is_signed);
}

void dropout(const void* x, void* y, uint8_t* mask, int64_t n, double p, uint64_t seed,
             uint64_t offset, DType dt, void* stream) {
  dt == DType::F32 ? dropout_typed<float>(x, y, mask, n, p, seed, offset, as_stream(stream))
                   : dropout_typed<double>(x, y, mask, n, p, seed, offset, as_stream(stream));
}

void dropout_backward(const void* dy, const uint8_t* mask, void* dx, int64_t n, double p,
                      DType dt, void* stream) {
  dt == DType::F32 ? dropout_backward_typed<float>(dy, mask, dx, n, p, as_stream(stream))
                   : dropout_backward_typed<double>(dy, mask, dx, n, p, as_stream(stream));
}

}  // namespace fusedtrain::cuda

// Batch- and layer-normalization kernels on the GPU. The per-element and
// per-statistic math is normalize_math.h's and act_math.h's, the functions
// the CPU loops (cpu/normalize_cpu.cpp) call; nvcc runs with --fmad=false.
//
// Reductions are deterministic and follow the CPU's order exactly:
// * column sums (batch norm's statistics and gradient sums, layer norm's
//   dweight / dbias) use the CPU's row blocks (NormRowBlocks, a function of
//   (B, C) only): one thread per (column, block) adds its block's rows in row
//   order in double, the partial sums go to the workspace, then one thread per
//   column adds the blocks in block order, as the CPU's combine() does;
// * row sums (layer norm) use the CPU's 16 fixed lanes (element j to lane
//   j % 16, in order of j): 16 threads per row, one per lane, then the lanes
//   are added in lane order (shuffles, every thread the same total).
// So the statistics, the running statistics and the parameter gradients are
// bitwise the CPU's. Elements go through the same FT_HD functions; the
// activations' transcendental functions (exp, tanh, erf) are CUDA's and may
// differ from the host libm's by an ulp, so sigmoid / tanh / gelu outputs
// (and the gradients through them) match the CPU to rounding, not bitwise.
// No floating-point atomics anywhere; nothing waits on the host.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/check.cuh"
#include "cuda/normalize_cuda.h"
#include "fusedtrain/act_math.h"
#include "fusedtrain/normalize_math.h"

namespace fusedtrain::cuda {

namespace {

constexpr int kLanes = 16;                       // the CPU's row-sum lanes
constexpr int kRowsPerBlock = kNormThreads / kLanes;
constexpr int64_t kMaxNormGrid = int64_t(1) << 20;

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

unsigned grid_of(int64_t work, int64_t per_block) {
  int64_t b = (work + per_block - 1) / per_block;
  if (b < 1) b = 1;
  if (b > kMaxNormGrid) b = kMaxNormGrid;
  return unsigned(b);
}

// Grid of the (column, row block) kernels: x over columns, y over blocks.
dim3 col_grid(int64_t C, int64_t blocks) {
  return dim3(unsigned((C + kNormThreads - 1) / kNormThreads), unsigned(blocks));
}

#define FT_LAUNCHED() FT_CUDA_CHECK(cudaGetLastError())

// ---------------------------------------------------------------------------
// CUDA kernels
// ---------------------------------------------------------------------------

// part[k*C + c] = sum over block k's rows of x[r][c] (double, row order)
template <typename T>
__global__ void col_sums_kernel(const T* x, int64_t C, NormRowBlocks blk, double* part) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t k = blockIdx.y;
  if (c >= C) return;
  double acc = 0.0;
  for (int64_t r = blk.begin(k); r < blk.end(k); ++r) acc += double(x[r * C + c]);
  part[k * C + c] = acc;
}

// part[k*C + c] = sum over block k's rows of (x[r][c] - mean[c])^2
template <typename T>
__global__ void col_centred_squares_kernel(const T* x, int64_t C, NormRowBlocks blk,
                                           const double* mean, double* part) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t k = blockIdx.y;
  if (c >= C) return;
  const double m = mean[c];
  double acc = 0.0;
  for (int64_t r = blk.begin(k); r < blk.end(k); ++r) {
    const double d = double(x[r * C + c]) - m;
    acc += d * d;
  }
  part[k * C + c] = acc;
}

// out[c] = (sum_k part[k*stride + c], in block order) / div
__global__ void combine_kernel(const double* part, int64_t count, int64_t stride, int64_t C,
                               double div, double* out) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double s = 0.0;
  for (int64_t k = 0; k < count; ++k) s += part[k * stride + c];
  out[c] = s / div;
}

// Per column: the running statistics (training, when given), mean / rstd out
// (double) and the T scalars of the output pass. dmean, dvar are the batch
// statistics (training) or null (eval: the running ones are used).
template <typename T>
__global__ void bn_stats_kernel(const double* dmean, const double* dvar, T* running_mean,
                                T* running_var, const T* weight, const T* bias, int64_t B,
                                int64_t C, bool training, double momentum, double eps,
                                double* mean, double* rstd, T* mhi, T* mlo, T* scale, T* shift) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double m, v;
  if (training) {
    m = dmean[c];
    v = dvar[c];
    if (running_mean != nullptr) {
      running_mean[c] = T(norm_running_update(double(running_mean[c]), m, momentum));
      running_var[c] =
          T(norm_running_update(double(running_var[c]), norm_unbiased(v, double(B)), momentum));
    }
  } else {
    m = double(running_mean[c]);
    v = double(running_var[c]);
  }
  const double r = norm_rstd(v, eps);
  mean[c] = m;
  rstd[c] = r;
  const T hi = T(m);
  mhi[c] = hi;
  mlo[c] = T(m - double(hi));
  scale[c] = T(weight != nullptr ? double(weight[c]) * r : r);
  shift[c] = bias != nullptr ? bias[c] : T(0);
}

// y = act((x - mean) * scale + shift); z = the pre-activation when kSaveZ
// (saved_of(A) == PreActivation, decided on the host: saved_of is host-only)
template <Act A, bool kSaveZ, typename T>
__global__ void bn_output_kernel(const T* x, T* y, T* z, int64_t n, int64_t C, const T* mhi,
                                 const T* mlo, const T* scale, const T* shift, T slope) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C;
    const T zz = norm_affine(x[i], mhi[c], mlo[c], scale[c], shift[c]);
    if constexpr (kSaveZ) z[i] = zz;
    y[i] = act_forward<A>(zz, slope);
  }
}

template <Act A, typename T>
__device__ T dz_at(const T* dy, const T* s, int64_t i, T slope) {
  if constexpr (A == Act::Identity) {
    return dy[i];
  } else {
    return act_backward<A>(dy[i], s[i], slope);
  }
}

// Per column: mean hi / lo and rstd in T (the backward's recentring).
template <typename T>
__global__ void bn_recentre_kernel(const double* mean, const double* rstd, int64_t C, T* mhi,
                                   T* mlo, T* rt) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const T hi = T(mean[c]);
  mhi[c] = hi;
  mlo[c] = T(mean[c] - double(hi));
  rt[c] = T(rstd[c]);
}

// part[k*2C + c] = sum dz, part[k*2C + C + c] = sum dz * xhat over block k's rows
template <Act A, typename T>
__global__ void bn_grad_sums_kernel(const T* dy, const T* s, const T* x, int64_t C,
                                    NormRowBlocks blk, const T* mhi, const T* mlo, const T* rt,
                                    T slope, double* part) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t k = blockIdx.y;
  if (c >= C) return;
  double a1 = 0.0, a2 = 0.0;
  for (int64_t r = blk.begin(k); r < blk.end(k); ++r) {
    const int64_t i = r * C + c;
    const T dz = dz_at<A>(dy, s, i, slope);
    const T xh = norm_xhat(x[i], mhi[c], mlo[c], rt[c]);
    a1 += double(dz);
    a2 += double(dz) * double(xh);
  }
  part[k * 2 * C + c] = a1;
  part[k * 2 * C + C + c] = a2;
}

// Per column: the block sums combined in block order -> a, mdz, mdzx and
// dweight / dbias (added to when accumulate).
template <typename T>
__global__ void bn_grad_scalars_kernel(const double* part, int64_t count, int64_t B, int64_t C,
                                       const double* rstd, const T* weight, T* dweight, T* dbias,
                                       bool accumulate, T* a, T* mdz, T* mdzx) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double sdz = 0.0, sdzx = 0.0;
  for (int64_t k = 0; k < count; ++k) sdz += part[k * 2 * C + c];
  for (int64_t k = 0; k < count; ++k) sdzx += part[k * 2 * C + C + c];
  const double r = rstd[c];
  a[c] = T(weight != nullptr ? double(weight[c]) * r : r);
  mdz[c] = T(sdz / double(B));
  mdzx[c] = T(sdzx / double(B));
  if (dweight != nullptr) {
    dweight[c] = T(accumulate ? double(dweight[c]) + sdzx : sdzx);
    dbias[c] = T(accumulate ? double(dbias[c]) + sdz : sdz);
  }
}

template <Act A, typename T>
__global__ void bn_dx_kernel(const T* dy, const T* s, const T* x, T* dx, int64_t n, int64_t C,
                             const T* mhi, const T* mlo, const T* rt, const T* a, const T* mdz,
                             const T* mdzx, T slope) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C;
    const T xh = norm_xhat(x[i], mhi[c], mlo[c], rt[c]);
    dx[i] = bn_backward_elem(dz_at<A>(dy, s, i, slope), xh, a[c], mdz[c], mdzx[c]);
  }
}

// The total of the 16 lanes of this thread's row, added in lane order (every
// lane of the row gets it). All 32 threads of the warp call it.
__device__ double lanes_total(double v) {
  const int base = int(threadIdx.x % 32) & ~(kLanes - 1);
  double t = 0.0;
  for (int l = 0; l < kLanes; ++l) t += __shfl_sync(0xffffffffu, v, base + l);
  return t;
}

// 16 threads per row (lane = threadIdx.x % 16), 16 rows per block, grid-stride
// over groups of rows (uniform over the block, so every warp shuffles whole).
template <typename T>
__global__ void ln_forward_kernel(const T* x, const T* w, const T* b, T* y, double* mean,
                                  double* rstd, int64_t B, int64_t C, double eps) {
  const int lane = int(threadIdx.x) % kLanes;
  for (int64_t base = int64_t(blockIdx.x) * kRowsPerBlock; base < B;
       base += int64_t(gridDim.x) * kRowsPerBlock) {
    const int64_t row = base + threadIdx.x / kLanes;
    const bool active = row < B;
    const T* xr = x + (active ? row : 0) * C;
    double acc = 0.0;
    if (active)
      for (int64_t j = lane; j < C; j += kLanes) acc += double(xr[j]);
    const double m = lanes_total(acc) / double(C);
    double sq = 0.0;
    if (active)
      for (int64_t j = lane; j < C; j += kLanes) {
        const double d = double(xr[j]) - m;
        sq += d * d;
      }
    const double rd = norm_rstd(lanes_total(sq) / double(C), eps);
    if (!active) continue;
    const T mh = T(m), ml = T(m - double(mh)), rt = T(rd);
    if (lane == 0) {
      mean[row] = m;
      rstd[row] = rd;
    }
    T* yr = y + row * C;
    for (int64_t c = lane; c < C; c += kLanes) {
      T v = norm_xhat(xr[c], mh, ml, rt);
      if (w != nullptr) v = v * w[c];
      if (b != nullptr) v = v + b[c];
      yr[c] = v;
    }
  }
}

template <typename T>
__global__ void ln_dx_kernel(const T* dy, const T* x, const double* mean, const double* rstd,
                             const T* w, T* dx, int64_t B, int64_t C) {
  const int lane = int(threadIdx.x) % kLanes;
  for (int64_t base = int64_t(blockIdx.x) * kRowsPerBlock; base < B;
       base += int64_t(gridDim.x) * kRowsPerBlock) {
    const int64_t row = base + threadIdx.x / kLanes;
    const bool active = row < B;
    const int64_t rr = active ? row : 0;
    const T* xr = x + rr * C;
    const T* dyr = dy + rr * C;
    const T mh = T(mean[rr]), ml = T(mean[rr] - double(mh)), rt = T(rstd[rr]);
    double sg = 0.0, sgx = 0.0;
    if (active)
      for (int64_t j = lane; j < C; j += kLanes) {
        const T g = w != nullptr ? dyr[j] * w[j] : dyr[j];
        const T xh = norm_xhat(xr[j], mh, ml, rt);
        sg += double(g);
        sgx += double(g) * double(xh);
      }
    const T mg = T(lanes_total(sg) / double(C)), mgx = T(lanes_total(sgx) / double(C));
    if (!active) continue;
    T* dxr = dx + row * C;
    for (int64_t c = lane; c < C; c += kLanes) {
      const T g = w != nullptr ? dyr[c] * w[c] : dyr[c];
      dxr[c] = ln_backward_elem(g, norm_xhat(xr[c], mh, ml, rt), rt, mg, mgx);
    }
  }
}

// part[k*2C + c] = sum dy * xhat, part[k*2C + C + c] = sum dy over block k's rows
template <typename T>
__global__ void ln_param_sums_kernel(const T* dy, const T* x, const double* mean,
                                     const double* rstd, int64_t C, NormRowBlocks blk,
                                     double* part) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t k = blockIdx.y;
  if (c >= C) return;
  double aw = 0.0, ab = 0.0;
  for (int64_t r = blk.begin(k); r < blk.end(k); ++r) {
    const T mh = T(mean[r]), ml = T(mean[r] - double(mh)), rt = T(rstd[r]);
    const int64_t i = r * C + c;
    const T xh = norm_xhat(x[i], mh, ml, rt);
    aw += double(dy[i]) * double(xh);
    ab += double(dy[i]);
  }
  part[k * 2 * C + c] = aw;
  part[k * 2 * C + C + c] = ab;
}

template <typename T>
__global__ void ln_param_grads_kernel(const double* part, int64_t count, int64_t C, T* dweight,
                                      T* dbias, bool accumulate) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double sw = 0.0, sb = 0.0;
  for (int64_t k = 0; k < count; ++k) sw += part[k * 2 * C + c];
  for (int64_t k = 0; k < count; ++k) sb += part[k * 2 * C + C + c];
  dweight[c] = T(accumulate ? double(dweight[c]) + sw : sw);
  if (dbias != nullptr) dbias[c] = T(accumulate ? double(dbias[c]) + sb : sb);
}

// ---------------------------------------------------------------------------
// kernel launchers
// ---------------------------------------------------------------------------

template <class F>
void with_act(Act a, F&& f) {
  switch (a) {
    case Act::Relu: f(std::integral_constant<Act, Act::Relu>{}); break;
    case Act::LeakyRelu: f(std::integral_constant<Act, Act::LeakyRelu>{}); break;
    case Act::Sigmoid: f(std::integral_constant<Act, Act::Sigmoid>{}); break;
    case Act::Tanh: f(std::integral_constant<Act, Act::Tanh>{}); break;
    case Act::GeluErf: f(std::integral_constant<Act, Act::GeluErf>{}); break;
    case Act::GeluTanh: f(std::integral_constant<Act, Act::GeluTanh>{}); break;
    default: f(std::integral_constant<Act, Act::Identity>{}); break;
  }
}

template <typename T>
void bn_forward_t(const T* x, const T* weight, const T* bias, T* running_mean, T* running_var,
                  T* y, T* z, double* mean, double* rstd, int64_t B, int64_t C, bool training,
                  double momentum, double eps, Act act, T slope, void* workspace,
                  cudaStream_t st) {
  if (C <= 0) return;
  const NormRowBlocks blk(B, C);
  const int64_t nb = blk.count > 1 ? blk.count : 1;
  double* part = static_cast<double*>(workspace);
  double* dmean = part + nb * C;
  double* dvar = dmean + C;
  T* slots = reinterpret_cast<T*>(dvar + C);  // 4C slots of 8 bytes, used as T
  T* mhi = slots;
  T* mlo = mhi + C;
  T* scale = mlo + C;
  T* shift = scale + C;
  const unsigned cols = unsigned((C + kNormThreads - 1) / kNormThreads);
  if (training) {
    col_sums_kernel<T><<<col_grid(C, blk.count), kNormThreads, 0, st>>>(x, C, blk, part);
    FT_LAUNCHED();
    combine_kernel<<<cols, kNormThreads, 0, st>>>(part, blk.count, C, C, double(B), dmean);
    FT_LAUNCHED();
    col_centred_squares_kernel<T><<<col_grid(C, blk.count), kNormThreads, 0, st>>>(
        x, C, blk, dmean, part);
    FT_LAUNCHED();
    combine_kernel<<<cols, kNormThreads, 0, st>>>(part, blk.count, C, C, double(B), dvar);
    FT_LAUNCHED();
  }
  bn_stats_kernel<T><<<cols, kNormThreads, 0, st>>>(
      training ? dmean : nullptr, training ? dvar : nullptr, running_mean, running_var, weight,
      bias, B, C, training, momentum, eps, mean, rstd, mhi, mlo, scale, shift);
  FT_LAUNCHED();
  const int64_t n = B * C;
  if (n <= 0) return;
  with_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    bn_output_kernel<A, saved_of(A) == Saved::PreActivation, T><<<grid_of(n, kNormThreads), kNormThreads, 0, st>>>(
        x, y, z, n, C, mhi, mlo, scale, shift, slope);
    FT_LAUNCHED();
  });
}

template <typename T>
void bn_backward_t(const T* dy, const T* x, const double* mean, const double* rstd, const T* s,
                   const T* weight, T* dx, T* dweight, T* dbias, int64_t B, int64_t C, Act act,
                   T slope, bool accumulate, void* workspace, cudaStream_t st) {
  if (C <= 0 || B <= 0) return;
  const NormRowBlocks blk(B, C);
  double* part = static_cast<double*>(workspace);
  T* slots = reinterpret_cast<T*>(part + blk.count * 2 * C);  // 6C slots of 8 bytes, used as T
  T* a = slots;
  T* mdz = a + C;
  T* mdzx = mdz + C;
  T* mhi = mdzx + C;
  T* mlo = mhi + C;
  T* rt = mlo + C;
  const unsigned cols = unsigned((C + kNormThreads - 1) / kNormThreads);
  bn_recentre_kernel<T><<<cols, kNormThreads, 0, st>>>(mean, rstd, C, mhi, mlo, rt);
  FT_LAUNCHED();
  const int64_t n = B * C;
  with_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    bn_grad_sums_kernel<A, T><<<col_grid(C, blk.count), kNormThreads, 0, st>>>(
        dy, s, x, C, blk, mhi, mlo, rt, slope, part);
    FT_LAUNCHED();
    bn_grad_scalars_kernel<T><<<cols, kNormThreads, 0, st>>>(
        part, blk.count, B, C, rstd, weight, dweight, dbias, accumulate, a, mdz, mdzx);
    FT_LAUNCHED();
    bn_dx_kernel<A, T><<<grid_of(n, kNormThreads), kNormThreads, 0, st>>>(
        dy, s, x, dx, n, C, mhi, mlo, rt, a, mdz, mdzx, slope);
    FT_LAUNCHED();
  });
}

template <typename T>
void ln_forward_t(const T* x, const T* w, const T* b, T* y, double* mean, double* rstd,
                  int64_t B, int64_t C, double eps, cudaStream_t st) {
  if (B <= 0 || C <= 0) return;
  ln_forward_kernel<T><<<grid_of(B, kRowsPerBlock), kNormThreads, 0, st>>>(x, w, b, y, mean,
                                                                            rstd, B, C, eps);
  FT_LAUNCHED();
}

template <typename T>
void ln_backward_t(const T* dy, const T* x, const double* mean, const double* rstd, const T* w,
                   T* dx, T* dweight, T* dbias, int64_t B, int64_t C, bool accumulate,
                   void* workspace, cudaStream_t st) {
  if (B <= 0 || C <= 0) return;
  ln_dx_kernel<T><<<grid_of(B, kRowsPerBlock), kNormThreads, 0, st>>>(dy, x, mean, rstd, w, dx,
                                                                       B, C);
  FT_LAUNCHED();
  if (dweight == nullptr) return;
  const NormRowBlocks blk(B, C);
  double* part = static_cast<double*>(workspace);
  ln_param_sums_kernel<T><<<col_grid(C, blk.count), kNormThreads, 0, st>>>(dy, x, mean, rstd, C,
                                                                            blk, part);
  FT_LAUNCHED();
  ln_param_grads_kernel<T><<<unsigned((C + kNormThreads - 1) / kNormThreads), kNormThreads, 0,
                             st>>>(part, blk.count, C, dweight, dbias, accumulate);
  FT_LAUNCHED();
}

template <typename T>
const T* in(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
T* out(void* p) {
  return static_cast<T*>(p);
}

}  // namespace

void batch_norm_forward(const void* x, const void* weight, const void* bias, void* running_mean,
                        void* running_var, void* y, void* z, double* mean, double* rstd,
                        int64_t B, int64_t C, bool training, double momentum, double eps, Act act,
                        double slope, DType dt, void* workspace, void* stream) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    bn_forward_t<T>(in<T>(x), in<T>(weight), in<T>(bias), out<T>(running_mean),
                    out<T>(running_var), out<T>(y), out<T>(z), mean, rstd, B, C, training,
                    momentum, eps, act, T(slope), workspace, as_stream(stream));
  };
  dt == DType::F32 ? run(float()) : run(double());
}

void batch_norm_backward(const void* dy, const void* x, const double* mean, const double* rstd,
                         const void* s, const void* weight, void* dx, void* dweight, void* dbias,
                         int64_t B, int64_t C, Act act, double slope, bool accumulate, DType dt,
                         void* workspace, void* stream) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    bn_backward_t<T>(in<T>(dy), in<T>(x), mean, rstd, in<T>(s), in<T>(weight), out<T>(dx),
                     out<T>(dweight), out<T>(dbias), B, C, act, T(slope), accumulate, workspace,
                     as_stream(stream));
  };
  dt == DType::F32 ? run(float()) : run(double());
}

void layer_norm_forward(const void* x, const void* weight, const void* bias, void* y,
                        double* mean, double* rstd, int64_t B, int64_t C, double eps, DType dt,
                        void* stream) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    ln_forward_t<T>(in<T>(x), in<T>(weight), in<T>(bias), out<T>(y), mean, rstd, B, C, eps,
                    as_stream(stream));
  };
  dt == DType::F32 ? run(float()) : run(double());
}

void layer_norm_backward(const void* dy, const void* x, const double* mean, const double* rstd,
                         const void* weight, void* dx, void* dweight, void* dbias, int64_t B,
                         int64_t C, bool accumulate, DType dt, void* workspace, void* stream) {
  auto run = [&](auto tag) {
    using T = decltype(tag);
    ln_backward_t<T>(in<T>(dy), in<T>(x), mean, rstd, in<T>(weight), out<T>(dx),
                     out<T>(dweight), out<T>(dbias), B, C, accumulate, workspace,
                     as_stream(stream));
  };
  dt == DType::F32 ? run(float()) : run(double());
}

}  // namespace fusedtrain::cuda

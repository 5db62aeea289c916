// Batch- and layer-normalization loops on the CPU (see normalize_cpu.h for the
// blocking and the determinism argument).
#include "cpu/normalize_cpu.h"

#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace fusedtrain::cpu {

namespace {

// Fixed row blocks of a (B, C) column reduction (normalize_math.h: the CUDA
// kernels use the same blocks and add them in the same order).
using RowBlocks = NormRowBlocks;

// Runs f(k) for k in [0, n) over up to num_threads() threads (fewer for small
// problems: `elems` elements in all).
template <class F>
void for_blocks(int64_t n, int64_t elems, F&& f) {
  const int nt = int(std::min<int64_t>(
      {int64_t(num_threads()), n, std::max<int64_t>(1, elems / kMinElementsPerThread)}));
  if (nt <= 1) {
    for (int64_t k = 0; k < n; ++k) f(k);
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t k = 0; k < n; ++k) f(k);
}

// Scratch of the calling thread, kept between calls (slot: independent buffers).
template <typename U>
U* scratch(size_t n, int slot) {
  thread_local std::vector<U> buf[2];
  if (buf[slot].size() < n) buf[slot].resize(n);
  return buf[slot].data();
}

// f(std::integral_constant<Act, A>) for the runtime activation (softmax is
// refused by the binding).
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

// Column sums of blocks' partials, added in block order: out[c] = sum_k part[k*stride + c].
void combine(const double* part, int64_t count, int64_t stride, int64_t C, double* out) {
  for (int64_t c = 0; c < C; ++c) out[c] = 0.0;
  for (int64_t k = 0; k < count; ++k) {
    const double* p = part + k * stride;
    for (int64_t c = 0; c < C; ++c) out[c] += p[c];
  }
}

// ---------------------------------------------------------------------------
// row-block kernels (rows [r0, r1) of a (B, C) array), compiled per SIMD level
// ---------------------------------------------------------------------------

// acc[c] = sum over the rows of x[r][c] (double)
template <typename T>
FT_CLONES void col_sums(const T* __restrict x, int64_t r0, int64_t r1, int64_t C,
                        double* __restrict acc) {
  for (int64_t c = 0; c < C; ++c) acc[c] = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * C;
    for (int64_t c = 0; c < C; ++c) acc[c] += double(xr[c]);
  }
}

// acc[c] = sum over the rows of (x[r][c] - mean[c])^2 (double)
template <typename T>
FT_CLONES void col_centred_squares(const T* __restrict x, int64_t r0, int64_t r1, int64_t C,
                                   const double* __restrict mean, double* __restrict acc) {
  for (int64_t c = 0; c < C; ++c) acc[c] = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const double d = double(xr[c]) - mean[c];
      acc[c] += d * d;
    }
  }
}

// y = act((x - mean) * scale + shift); z = the pre-activation when saved
template <Act A, typename T>
FT_CLONES void bn_output_rows(const T* __restrict x, T* __restrict y, T* __restrict z, int64_t r0,
                              int64_t r1, int64_t C, const T* __restrict mhi,
                              const T* __restrict mlo, const T* __restrict scale,
                              const T* __restrict shift, T slope) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * C;
    T* __restrict yr = y + r * C;
    if constexpr (saved_of(A) == Saved::PreActivation) {
      T* __restrict zr = z + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const T zz = norm_affine(xr[c], mhi[c], mlo[c], scale[c], shift[c]);
        zr[c] = zz;
        yr[c] = act_forward<A>(zz, slope);
      }
    } else {
      for (int64_t c = 0; c < C; ++c)
        yr[c] = act_forward<A>(norm_affine(xr[c], mhi[c], mlo[c], scale[c], shift[c]), slope);
    }
  }
}

template <Act A, typename T>
inline T dz_of(const T* __restrict dy, const T* __restrict s, int64_t i, T slope) {
  if constexpr (A == Act::Identity) {
    (void)s;
    (void)slope;
    return dy[i];
  } else {
    return act_backward<A>(dy[i], s[i], slope);
  }
}

// acc1[c] = sum dz, acc2[c] = sum dz * xhat over the rows (double)
template <Act A, typename T>
FT_CLONES void bn_grad_sums(const T* __restrict dy, const T* __restrict s, const T* __restrict x,
                            int64_t r0, int64_t r1, int64_t C, const T* __restrict mhi,
                            const T* __restrict mlo, const T* __restrict rt, T slope,
                            double* __restrict acc1, double* __restrict acc2) {
  for (int64_t c = 0; c < C; ++c) acc1[c] = acc2[c] = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      const T dz = dz_of<A>(dy, s, i, slope);
      const T xh = norm_xhat(x[i], mhi[c], mlo[c], rt[c]);
      acc1[c] += double(dz);
      acc2[c] += double(dz) * double(xh);
    }
  }
}

template <Act A, typename T>
FT_CLONES void bn_dx_rows(const T* __restrict dy, const T* __restrict s, const T* __restrict x,
                          T* __restrict dx, int64_t r0, int64_t r1, int64_t C,
                          const T* __restrict mhi, const T* __restrict mlo,
                          const T* __restrict rt, const T* __restrict a,
                          const T* __restrict mdz, const T* __restrict mdzx, T slope) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      const T xh = norm_xhat(x[i], mhi[c], mlo[c], rt[c]);
      dx[i] = bn_backward_elem(dz_of<A>(dy, s, i, slope), xh, a[c], mdz[c], mdzx[c]);
    }
  }
}

// Row sums in kLanes fixed lanes (element j goes to lane j % kLanes), the
// lanes then added in order: vectorisable without reassociating, and the
// same for any thread count.
constexpr int64_t kLanes = 16;

inline double lanes_total(const double* acc) {
  double t = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) t += acc[l];
  return t;
}

template <bool kAffine, bool kBias, typename T>
FT_CLONES void ln_forward_rows(const T* __restrict x, const T* __restrict w,
                               const T* __restrict b, T* __restrict y, double* __restrict mean,
                               double* __restrict rstd, int64_t r0, int64_t r1, int64_t C,
                               double eps) {
  const int64_t body = C - C % kLanes;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * C;
    T* __restrict yr = y + r * C;
    double acc[kLanes] = {};
    for (int64_t j = 0; j < body; j += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) acc[l] += double(xr[j + l]);
    for (int64_t j = body; j < C; ++j) acc[j - body] += double(xr[j]);
    const double m = lanes_total(acc) / double(C);
    double sq[kLanes] = {};
    for (int64_t j = 0; j < body; j += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) {
        const double d = double(xr[j + l]) - m;
        sq[l] += d * d;
      }
    for (int64_t j = body; j < C; ++j) {
      const double d = double(xr[j]) - m;
      sq[j - body] += d * d;
    }
    const double rd = norm_rstd(lanes_total(sq) / double(C), eps);
    const T mh = T(m), ml = T(m - double(mh)), rt = T(rd);
    mean[r] = m;
    rstd[r] = rd;
    for (int64_t c = 0; c < C; ++c) {
      T v = norm_xhat(xr[c], mh, ml, rt);
      if constexpr (kAffine) v = v * w[c];
      if constexpr (kBias) v = v + b[c];
      yr[c] = v;
    }
  }
}

template <bool kAffine, typename T>
FT_CLONES void ln_backward_rows(const T* __restrict dy, const T* __restrict x,
                                const double* __restrict mean, const double* __restrict rstd,
                                const T* __restrict w, T* __restrict dx, int64_t r0, int64_t r1,
                                int64_t C, double* __restrict accw, double* __restrict accb) {
  const int64_t body = C - C % kLanes;
  if constexpr (kAffine)
    for (int64_t c = 0; c < C; ++c) accw[c] = accb[c] = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * C;
    const T* __restrict dyr = dy + r * C;
    T* __restrict dxr = dx + r * C;
    const T mh = T(mean[r]), ml = T(mean[r] - double(mh)), rt = T(rstd[r]);
    double sg[kLanes] = {}, sgx[kLanes] = {};
    auto add = [&](int64_t j, int64_t l) {
      const T g = kAffine ? dyr[j] * w[j] : dyr[j];
      const T xh = norm_xhat(xr[j], mh, ml, rt);
      sg[l] += double(g);
      sgx[l] += double(g) * double(xh);
      if constexpr (kAffine) {
        accw[j] += double(dyr[j]) * double(xh);
        accb[j] += double(dyr[j]);
      }
    };
    for (int64_t j = 0; j < body; j += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) add(j + l, l);
    for (int64_t j = body; j < C; ++j) add(j, j - body);
    const T mg = T(lanes_total(sg) / double(C)), mgx = T(lanes_total(sgx) / double(C));
    for (int64_t c = 0; c < C; ++c) {
      const T g = kAffine ? dyr[c] * w[c] : dyr[c];
      dxr[c] = ln_backward_elem(g, norm_xhat(xr[c], mh, ml, rt), rt, mg, mgx);
    }
  }
}

}  // namespace

template <typename T>
void batch_norm_forward(const T* x, const T* weight, const T* bias, T* running_mean,
                        T* running_var, T* y, T* z, double* mean, double* rstd, int64_t B,
                        int64_t C, bool training, double momentum, double eps, Act act, T slope) {
  if (C <= 0) return;
  const RowBlocks blk(B, C);
  const int64_t nb = std::max<int64_t>(blk.count, 1);
  // scratch: partials (count x C), dmean (C), dvar (C); mean hi / lo, scale, shift (C) in T
  double* part = scratch<double>(size_t(nb * C + 2 * C), 0);
  double* dmean = part + nb * C;
  double* dvar = dmean + C;
  T* mhi = scratch<T>(size_t(4 * C), 1);
  T* mlo = mhi + C;
  T* scale = mlo + C;
  T* shift = scale + C;
  const int64_t total = B * C;
  if (training) {
    // pass 1: column sums -> mean; pass 2: centred squares -> biased variance
    for_blocks(blk.count, total,
               [&](int64_t k) { col_sums(x, blk.begin(k), blk.end(k), C, part + k * C); });
    combine(part, blk.count, C, C, dmean);
    for (int64_t c = 0; c < C; ++c) dmean[c] /= double(B);
    for_blocks(blk.count, total, [&](int64_t k) {
      col_centred_squares(x, blk.begin(k), blk.end(k), C, dmean, part + k * C);
    });
    combine(part, blk.count, C, C, dvar);
    for (int64_t c = 0; c < C; ++c) dvar[c] /= double(B);
    if (running_mean != nullptr) {
      for (int64_t c = 0; c < C; ++c) {
        running_mean[c] = T(norm_running_update(double(running_mean[c]), dmean[c], momentum));
        running_var[c] = T(norm_running_update(double(running_var[c]),
                                               norm_unbiased(dvar[c], double(B)), momentum));
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      dmean[c] = double(running_mean[c]);
      dvar[c] = double(running_var[c]);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const double r = norm_rstd(dvar[c], eps);
    mean[c] = dmean[c];
    rstd[c] = r;
    mhi[c] = T(dmean[c]);
    mlo[c] = T(dmean[c] - double(mhi[c]));
    scale[c] = T(weight != nullptr ? double(weight[c]) * r : r);
    shift[c] = bias != nullptr ? bias[c] : T(0);
  }
  // pass 3: y = act((x - mean) * scale + shift), z = the pre-activation
  with_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    for_blocks(blk.count, total, [&](int64_t k) {
      bn_output_rows<A>(x, y, z, blk.begin(k), blk.end(k), C, mhi, mlo, scale, shift, slope);
    });
  });
}

template <typename T>
void batch_norm_backward(const T* dy, const T* x, const double* mean, const double* rstd,
                         const T* s, const T* weight, T* dx, T* dweight, T* dbias, int64_t B,
                         int64_t C, Act act, T slope, bool accumulate) {
  if (C <= 0) return;
  const RowBlocks blk(B, C);
  const int64_t nb = std::max<int64_t>(blk.count, 1);
  // scratch: partials (count x 2C), sdz (C), sdzx (C); a, mdz, mdzx, mean hi / lo, rstd in T
  double* part = scratch<double>(size_t(nb * 2 * C + 2 * C), 0);
  double* sdz = part + nb * 2 * C;
  double* sdzx = sdz + C;
  T* a = scratch<T>(size_t(6 * C), 1);
  T* mdz = a + C;
  T* mdzx = mdz + C;
  T* mhi = mdzx + C;
  T* mlo = mhi + C;
  T* rt = mlo + C;
  for (int64_t c = 0; c < C; ++c) {
    mhi[c] = T(mean[c]);
    mlo[c] = T(mean[c] - double(mhi[c]));
    rt[c] = T(rstd[c]);
  }
  const int64_t total = B * C;
  with_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    // pass 1: sum(dz), sum(dz * xhat) per column
    for_blocks(blk.count, total, [&](int64_t k) {
      bn_grad_sums<A>(dy, s, x, blk.begin(k), blk.end(k), C, mhi, mlo, rt, slope,
                      part + k * 2 * C, part + k * 2 * C + C);
    });
    combine(part, blk.count, 2 * C, C, sdz);
    combine(part + C, blk.count, 2 * C, C, sdzx);
    for (int64_t c = 0; c < C; ++c) {
      const double r = rstd[c];
      a[c] = T(weight != nullptr ? double(weight[c]) * r : r);
      mdz[c] = T(sdz[c] / double(B));
      mdzx[c] = T(sdzx[c] / double(B));
      if (dweight != nullptr) {
        dweight[c] = T(accumulate ? double(dweight[c]) + sdzx[c] : sdzx[c]);
        dbias[c] = T(accumulate ? double(dbias[c]) + sdz[c] : sdz[c]);
      }
    }
    // pass 2: dx
    for_blocks(blk.count, total, [&](int64_t k) {
      bn_dx_rows<A>(dy, s, x, dx, blk.begin(k), blk.end(k), C, mhi, mlo, rt, a, mdz, mdzx,
                    slope);
    });
  });
}

template <typename T>
void layer_norm_forward(const T* x, const T* weight, const T* bias, T* y, double* mean,
                        double* rstd, int64_t B, int64_t C, double eps) {
  if (B <= 0) return;
  const RowBlocks blk(B, C);
  for_blocks(blk.count, B * C, [&](int64_t k) {
    const int64_t r0 = blk.begin(k), r1 = blk.end(k);
    if (weight != nullptr && bias != nullptr) {
      ln_forward_rows<true, true>(x, weight, bias, y, mean, rstd, r0, r1, C, eps);
    } else if (weight != nullptr) {
      ln_forward_rows<true, false>(x, weight, bias, y, mean, rstd, r0, r1, C, eps);
    } else if (bias != nullptr) {
      ln_forward_rows<false, true>(x, weight, bias, y, mean, rstd, r0, r1, C, eps);
    } else {
      ln_forward_rows<false, false>(x, weight, bias, y, mean, rstd, r0, r1, C, eps);
    }
  });
}

template <typename T>
void layer_norm_backward(const T* dy, const T* x, const double* mean, const double* rstd,
                         const T* weight, T* dx, T* dweight, T* dbias, int64_t B, int64_t C,
                         bool accumulate) {
  if (B <= 0 || C <= 0) return;
  const RowBlocks blk(B, C);
  const bool params = dweight != nullptr;
  double* part = params ? scratch<double>(size_t(blk.count * 2 * C + 2 * C), 0) : nullptr;
  for_blocks(blk.count, B * C, [&](int64_t k) {
    const int64_t r0 = blk.begin(k), r1 = blk.end(k);
    if (params) {
      ln_backward_rows<true>(dy, x, mean, rstd, weight, dx, r0, r1, C, part + k * 2 * C,
                             part + k * 2 * C + C);
    } else {
      ln_backward_rows<false>(dy, x, mean, rstd, weight, dx, r0, r1, C, nullptr, nullptr);
    }
  });
  if (params) {
    double* sw = part + blk.count * 2 * C;
    double* sb = sw + C;
    combine(part, blk.count, 2 * C, C, sw);
    combine(part + C, blk.count, 2 * C, C, sb);
    for (int64_t c = 0; c < C; ++c) {
      dweight[c] = T(accumulate ? double(dweight[c]) + sw[c] : sw[c]);
      if (dbias != nullptr) dbias[c] = T(accumulate ? double(dbias[c]) + sb[c] : sb[c]);
    }
  }
}

#define FT_NORMALIZE_INSTANTIATE(T)                                                            \
  template void batch_norm_forward<T>(const T*, const T*, const T*, T*, T*, T*, T*, double*,   \
                                      double*, int64_t, int64_t, bool, double, double, Act, T); \
  template void batch_norm_backward<T>(const T*, const T*, const double*, const double*,        \
                                       const T*, const T*, T*, T*, T*, int64_t, int64_t, Act,   \
                                       T, bool);                                                \
  template void layer_norm_forward<T>(const T*, const T*, const T*, T*, double*, double*,       \
                                      int64_t, int64_t, double);                                \
  template void layer_norm_backward<T>(const T*, const T*, const double*, const double*,        \
                                       const T*, T*, T*, T*, int64_t, int64_t, bool);
FT_NORMALIZE_INSTANTIATE(float)
FT_NORMALIZE_INSTANTIATE(double)
#undef FT_NORMALIZE_INSTANTIATE

}  // namespace fusedtrain::cpu

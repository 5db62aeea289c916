// Batch- and layer-normalization loops on the CPU (see normalize_cpu.h for the
// blocking and the determinism argument).
#include "cpu/normalize_cpu.h"

#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/parallel.h"

namespace fusedtrain::cpu {

namespace {

// Fixed row blocks of a (B, C) column reduction: about kBlockElems elements
// each, at most kMaxBlocks. A function of the shape only.
constexpr int64_t kBlockElems = 16384;
constexpr int64_t kMaxBlocks = 64;

struct RowBlocks {
  int64_t B = 0, rows = 1, count = 0;
  RowBlocks(int64_t B_, int64_t C) : B(B_) {
    if (B <= 0) return;
    const int64_t want = std::max<int64_t>(1, B * std::max<int64_t>(C, 1) / kBlockElems);
    const int64_t n = std::min<int64_t>({kMaxBlocks, want, B});
    rows = (B + n - 1) / n;
    count = (B + rows - 1) / rows;
  }
  int64_t begin(int64_t k) const { return std::min(B, k * rows); }
  int64_t end(int64_t k) const { return std::min(B, (k + 1) * rows); }
};

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

}  // namespace

template <typename T>
void batch_norm_forward(const T* x, const T* weight, const T* bias, T* running_mean,
                        T* running_var, T* y, T* z, double* mean, double* rstd, int64_t B,
                        int64_t C, bool training, double momentum, double eps, Act act, T slope) {
  if (C <= 0) return;
  const RowBlocks blk(B, C);
  // scratch: partials (count x C), dmean (C), dvar (C); scale, shift (C) in T
  double* part = scratch<double>(size_t(std::max<int64_t>(blk.count, 1) * C + 2 * C), 0);
  double* dmean = part + std::max<int64_t>(blk.count, 1) * C;
  double* dvar = dmean + C;
  T* mhi = scratch<T>(size_t(4 * C), 1);
  T* mlo = mhi + C;
  T* scale = mlo + C;
  T* shift = scale + C;
  const int64_t total = B * C;
  if (training) {
    // pass 1: column sums -> mean
    for_blocks(blk.count, total, [&](int64_t k) {
      double* acc = part + k * C;
      for (int64_t c = 0; c < C; ++c) acc[c] = 0.0;
      for (int64_t r = blk.begin(k); r < blk.end(k); ++r) {
        const T* xr = x + r * C;
        for (int64_t c = 0; c < C; ++c) acc[c] += double(xr[c]);
      }
    });
    combine(part, blk.count, C, C, dmean);
    for (int64_t c = 0; c < C; ++c) dmean[c] /= double(B);
    // pass 2: centred sums of squares -> biased variance
    for_blocks(blk.count, total, [&](int64_t k) {
      double* acc = part + k * C;
      for (int64_t c = 0; c < C; ++c) acc[c] = 0.0;
      for (int64_t r = blk.begin(k); r < blk.end(k); ++r) {
        const T* xr = x + r * C;
        for (int64_t c = 0; c < C; ++c) {
          const double d = double(xr[c]) - dmean[c];
          acc[c] += d * d;
        }
      }
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
      for (int64_t r = blk.begin(k); r < blk.end(k); ++r) {
        const T* xr = x + r * C;
        T* yr = y + r * C;
        if constexpr (saved_of(A) == Saved::PreActivation) {
          T* zr = z + r * C;
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
  // scratch: partials (count x 2C), sdz (C), sdzx (C); a, mdz, mdzx (C) in T
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
    auto dz_at = [&](int64_t i) {
      if constexpr (A == Act::Identity) {
        return dy[i];
      } else {
        return act_backward<A>(dy[i], s[i], slope);
      }
    };
    // pass 1: sum(dz), sum(dz * xhat) per column
    for_blocks(blk.count, total, [&](int64_t k) {
      double* acc1 = part + k * 2 * C;
      double* acc2 = acc1 + C;
      for (int64_t c = 0; c < 2 * C; ++c) acc1[c] = 0.0;
      for (int64_t r = blk.begin(k); r < blk.end(k); ++r) {
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = r * C + c;
          const T dz = dz_at(i);
          const T xh = norm_xhat(x[i], mhi[c], mlo[c], rt[c]);
          acc1[c] += double(dz);
          acc2[c] += double(dz) * double(xh);
        }
      }
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
      for (int64_t r = blk.begin(k); r < blk.end(k); ++r) {
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = r * C + c;
          const T xh = norm_xhat(x[i], mhi[c], mlo[c], rt[c]);
          dx[i] = bn_backward_elem(dz_at(i), xh, a[c], mdz[c], mdzx[c]);
        }
      }
    });
  });
}

template <typename T>
void layer_norm_forward(const T* x, const T* weight, const T* bias, T* y, double* mean,
                        double* rstd, int64_t B, int64_t C, double eps) {
  if (B <= 0) return;
  const RowBlocks blk(B, C);
  for_blocks(blk.count, B * C, [&](int64_t k) {
    for (int64_t r = blk.begin(k); r < blk.end(k); ++r) {
      const T* xr = x + r * C;
      T* yr = y + r * C;
      double sum = 0.0;
      for (int64_t c = 0; c < C; ++c) sum += double(xr[c]);
      const double m = sum / double(C);
      double sq = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        const double d = double(xr[c]) - m;
        sq += d * d;
      }
      const double rd = norm_rstd(sq / double(C), eps);
      const T mh = T(m), ml = T(m - double(mh)), rt = T(rd);
      mean[r] = m;
      rstd[r] = rd;
      if (weight != nullptr && bias != nullptr) {
        for (int64_t c = 0; c < C; ++c) yr[c] = norm_xhat(xr[c], mh, ml, rt) * weight[c] + bias[c];
      } else if (weight != nullptr) {
        for (int64_t c = 0; c < C; ++c) yr[c] = norm_xhat(xr[c], mh, ml, rt) * weight[c];
      } else if (bias != nullptr) {
        for (int64_t c = 0; c < C; ++c) yr[c] = norm_xhat(xr[c], mh, ml, rt) + bias[c];
      } else {
        for (int64_t c = 0; c < C; ++c) yr[c] = norm_xhat(xr[c], mh, ml, rt);
      }
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
    double* accw = params ? part + k * 2 * C : nullptr;
    double* accb = params ? accw + C : nullptr;
    if (params)
      for (int64_t c = 0; c < 2 * C; ++c) accw[c] = 0.0;
    for (int64_t r = blk.begin(k); r < blk.end(k); ++r) {
      const T* xr = x + r * C;
      const T* dyr = dy + r * C;
      T* dxr = dx + r * C;
      const T mh = T(mean[r]), ml = T(mean[r] - double(mh)), rt = T(rstd[r]);
      double sg = 0.0, sgx = 0.0;
      for (int64_t c = 0; c < C; ++c) {
        const T g = weight != nullptr ? dyr[c] * weight[c] : dyr[c];
        const T xh = norm_xhat(xr[c], mh, ml, rt);
        sg += double(g);
        sgx += double(g) * double(xh);
        if (params) {
          accw[c] += double(dyr[c]) * double(xh);
          accb[c] += double(dyr[c]);
        }
      }
      const T mg = T(sg / double(C)), mgx = T(sgx / double(C));
      for (int64_t c = 0; c < C; ++c) {
        const T g = weight != nullptr ? dyr[c] * weight[c] : dyr[c];
        dxr[c] = ln_backward_elem(g, norm_xhat(xr[c], mh, ml, rt), rt, mg, mgx);
      }
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

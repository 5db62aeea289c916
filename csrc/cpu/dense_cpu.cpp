// Dense-layer loops on the CPU. Work is cut into fixed tiles of rows (or
// columns) that OpenMP threads share; each tile is a serial OpenBLAS GEMM,
// followed in the same thread by the fused epilogue while the tile is still
// in cache. Tiles never split the reduction dimension and their size does not
// depend on the thread count, so results are bitwise the same for any number
// of threads.
#include "cpu/dense_cpu.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu/blas.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"

namespace fusedtrain::cpu {

namespace {

// Tiles of rows (or columns): a function of the problem's shape only (never
// of the thread count, so results do not depend on it): at most kMaxTiles
// tiles of at least kTileQuantum rows, split as evenly as the quantum allows
// (two threads sharing four tiles of 192, 192, 208, 192 rows are balanced;
// tiles of 224, 224, 224, 112 would leave one thread 30% more work). Few
// large tiles keep the cost of re-packing the shared GEMM operand per tile
// small; four of them still spread over the threads of a small machine.
constexpr int64_t kTileQuantum = 32;
constexpr int64_t kMaxTiles = 4;
// Each thread takes at least this many multiply-adds (about 3 us of GEMM
// on the dev machine, several times the cost of waking a thread that is
// spinning); smaller GEMMs run on fewer threads. A 128 x 256 x 10 layer
// (2.5 x 2^17) then runs on two threads: 10.6 -> 6.8 us forward.
constexpr int64_t kMinParallelFlops = 1 << 17;

struct Tiling {
  int64_t n = 0, count = 0;
  explicit Tiling(int64_t n_)
      : n(n_),
        count(n_ > 0 ? std::min<int64_t>(kMaxTiles, std::max<int64_t>(1, n_ / kTileQuantum))
                     : 0) {}
  // first row of tile t (t = count gives n): t n / count, rounded to the quantum
  int64_t begin(int64_t t) const {
    if (t >= count) return n;
    const int64_t x = (n * t / count + kTileQuantum / 2) / kTileQuantum * kTileQuantum;
    return std::min(x, n);
  }
  int64_t size(int64_t t) const { return begin(t + 1) - begin(t); }
};

// Which side of C (M, N) = A (M, K) @ B (K, N) to cut into tiles. Each row
// tile's GEMM packs all of B again, each column tile's all of A: cut the side
// whose tiles re-pack less (rows for a large batch; columns for a batch
// smaller than the layer's width), as long as that gives two tiles or more.
// A function of the shape only, like the tiles themselves.
bool tile_rows(int64_t M, int64_t N, int64_t K) {
  const Tiling tm(M), tn(N);
  if (tm.count < 2 || tn.count < 2) return tm.count >= tn.count;
  return tm.count * K * N + M * K <= tn.count * M * K + K * N;
}

// Runs f(t) for t in [0, ntiles) on up to num_threads() threads, each a
// contiguous run of the tiles.
template <class F>
void for_tiles(int64_t ntiles, int64_t flops, F&& f) {
  const int nt = int(std::min<int64_t>({int64_t(num_threads()), ntiles,
                                        std::max<int64_t>(1, flops / kMinParallelFlops)}));
  if (nt <= 1) {
    for (int64_t t = 0; t < ntiles; ++t) f(t);
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < ntiles; ++t) f(t);
}

// C (M, N) = op(A) @ op(B) + beta C as tiles of C's rows or columns
// (tile_rows), the K dimension never split: count() tiles, run(t) computes
// tile t.
template <typename T>
struct GemmTiles {
  bool ta, tb;
  int64_t M, N, K;
  const T* A;
  int64_t lda;
  const T* B;
  int64_t ldb;
  T beta;
  T* C;
  int64_t ldc;
  bool rows = tile_rows(M, N, K);
  Tiling tiling{rows ? M : N};

  int64_t count() const { return tiling.count; }
  int64_t flops() const { return M * N * K; }
  void run(int64_t t) const {
    const int64_t i0 = tiling.begin(t), len = tiling.size(t);
    if (rows) {
      const T* a = ta ? A + i0 : A + i0 * lda;  // rows of op(A)
      gemm(ta, tb, len, N, K, T(1), a, lda, B, ldb, beta, C + i0 * ldc, ldc);
    } else {
      const T* b = tb ? B + i0 * ldb : B + i0;  // columns of op(B)
      gemm(ta, tb, M, len, K, T(1), A, lda, b, ldb, beta, C + i0, ldc);
    }
  }
};

// ---------------------------------------------------------------------------
// forward epilogue: v = y + b; z = v (if saved); y = act(v)
// y, z are (rows, cols) with row stride ld; b is (cols,) or null
// ---------------------------------------------------------------------------
template <Act A, bool kBias, bool kSaveZ, typename T>
FT_CLONES void epilogue_rows(T* __restrict y, T* __restrict z, const T* __restrict b,
                             int64_t rows, int64_t cols, int64_t ld, T slope) {
  for (int64_t r = 0; r < rows; ++r) {
    T* yr = y + r * ld;
    T* zr = kSaveZ ? z + r * ld : nullptr;
    for (int64_t c = 0; c < cols; ++c) {
      T v = yr[c];
      if constexpr (kBias) v = v + b[c];
      if constexpr (kSaveZ) zr[c] = v;
      yr[c] = act_forward<A>(v, slope);
    }
  }
}

// softmax per row: y = exp(v - max) / sum, v = y + b
template <bool kBias, typename T>
FT_CLONES void softmax_rows(T* __restrict y, const T* __restrict b, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    T* yr = y + r * cols;
    T mx = -INFINITY;
    for (int64_t c = 0; c < cols; ++c) {
      if constexpr (kBias) yr[c] = yr[c] + b[c];
      mx = ft_max(mx, yr[c]);
    }
    T sum = T(0);
    for (int64_t c = 0; c < cols; ++c) {
      yr[c] = softmax_shifted_exp(yr[c], mx);
      sum = sum + yr[c];
    }
    const T inv = T(1) / sum;
    for (int64_t c = 0; c < cols; ++c) yr[c] = yr[c] * inv;
  }
}

// The epilogue of a block of y (rows, cols), row stride ld (softmax: whole
// rows, ld == cols).
template <Act A, typename T>
void epilogue(T* y, T* z, const T* b, int64_t rows, int64_t cols, int64_t ld, T slope) {
  if constexpr (A == Act::Softmax) {
    b ? softmax_rows<true>(y, b, rows, cols) : softmax_rows<false>(y, b, rows, cols);
  } else if constexpr (saved_of(A) == Saved::PreActivation) {
    b ? epilogue_rows<A, true, true>(y, z, b, rows, cols, ld, slope)
      : epilogue_rows<A, false, true>(y, z, b, rows, cols, ld, slope);
  } else {
    b ? epilogue_rows<A, true, false>(y, z, b, rows, cols, ld, slope)
      : epilogue_rows<A, false, false>(y, z, b, rows, cols, ld, slope);
  }
}

// y = act(x @ w + b) in tiles of rows or of columns (tile_rows; softmax,
// which needs whole rows, always in rows), each GEMM followed by its
// epilogue while the tile is in cache.
template <Act A, typename T>
void forward_impl(const T* x, const T* w, const T* b, T* y, T* z, int64_t B, int64_t in,
                  int64_t out, T slope) {
  const int64_t ld_in = std::max<int64_t>(in, 1), ld_out = std::max<int64_t>(out, 1);
  const bool fused = A != Act::Identity || b;
  const Tiling tr(B), tc(out);
  if (A == Act::Softmax || tile_rows(B, out, in)) {
    for_tiles(tr.count, B * in * out, [&](int64_t t) {
      const int64_t r0 = tr.begin(t), rows = tr.size(t);
      gemm(false, false, rows, out, in, T(1), x + r0 * in, ld_in, w, ld_out, T(0),
           y + r0 * out, ld_out);
      if (fused) epilogue<A>(y + r0 * out, z ? z + r0 * out : nullptr, b, rows, out, ld_out, slope);
    });
  } else {
    for_tiles(tc.count, B * in * out, [&](int64_t t) {
      const int64_t c0 = tc.begin(t), cols = tc.size(t);
      gemm(false, false, B, cols, in, T(1), x, ld_in, w + c0, ld_out, T(0), y + c0, ld_out);
      if (fused)
        epilogue<A>(y + c0, z ? z + c0 : nullptr, b ? b + c0 : nullptr, B, cols, ld_out, slope);
    });
  }
}

// ---------------------------------------------------------------------------
// backward: dz = dy * act'(saved) and the column sums of dz, in one pass.
// acc (out,) accumulates in double, rows in order: the same result for any
// thread count.
// ---------------------------------------------------------------------------
template <Act A, typename T>
FT_CLONES void grad_rows(const T* __restrict dy, const T* __restrict s, T* __restrict dz,
                         double* __restrict acc, int64_t rows, int64_t cols, T slope) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * cols;
    const T* sr = s + r * cols;
    T* dzr = dz + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const T g = act_backward<A>(dyr[c], sr[c], slope);
      dzr[c] = g;
      acc[c] += double(g);
    }
  }
}

// softmax: dz_j = y_j * (dy_j - sum_k dy_k y_k)
template <typename T>
FT_CLONES void softmax_grad_rows(const T* __restrict dy, const T* __restrict y,
                                 T* __restrict dz, double* __restrict acc, int64_t rows,
                                 int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * cols;
    const T* yr = y + r * cols;
    T* dzr = dz + r * cols;
    T dot = T(0);
    for (int64_t c = 0; c < cols; ++c) dot = dot + dyr[c] * yr[c];
    for (int64_t c = 0; c < cols; ++c) {
      const T g = yr[c] * (dyr[c] - dot);
      dzr[c] = g;
      acc[c] += double(g);
    }
  }
}

template <typename T>
FT_CLONES void column_sums(const T* __restrict dy, double* __restrict acc, int64_t rows,
                           int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) acc[c] += double(dy[r * cols + c]);
}

template <Act A, typename T>
void backward_impl(const T* dy, const T* x, const T* w, const T* saved, T* dz, T* dx, T* dw,
                   T* db, int64_t B, int64_t in, int64_t out, T slope, bool accumulate) {
  // one pass over dy per row tile: dz = dy * act'(saved) and the tile's
  // column sums (double); the tiles' sums are then added in tile order
  const Tiling tr(B);
  const int64_t nt = tr.count;
  // The calling thread's buffer, reused across calls. The workers reach it
  // through this pointer: in their code the name of a thread_local would be
  // their own (empty) instance.
  thread_local std::vector<double> partial_buf;
  partial_buf.assign(size_t(std::max<int64_t>(nt, 1) * out), 0.0);
  double* const partial = partial_buf.data();
  const int64_t ld_in = std::max<int64_t>(in, 1), ld_out = std::max<int64_t>(out, 1);
  const T* g = A == Act::Identity ? dy : dz;
  // dw (in, out) = x^T (in, B) @ g (B, out) and, unless dx is skipped,
  // dx (B, in) = g (B, out) @ w^T (out, in). Both GEMMs' tiles go to the
  // threads as one list, with no barrier between the GEMMs; with two
  // threads, one runs dw's tiles and the other dx's, each touching only its
  // own operands. (Handing out tiles dynamically measured up to 2x slower
  // on small layers: 128 x 256 -> 10.)
  const GemmTiles<T> gw{true, false, in, out, B, x, ld_in, g, ld_out, accumulate ? T(1) : T(0),
                        dw, ld_out};
  const GemmTiles<T> gx{false, true, B, in, out, g, ld_out, w, ld_out, T(0), dx, ld_in};
  const int64_t nw = gw.count(), nx = dx ? gx.count() : 0;
  const int64_t gemm_flops = gw.flops() + (dx ? gx.flops() : 0);
  // (on as many threads as the GEMMs below: each thread then finds the dz
  // rows it wrote in its own cache; written by one thread, all of dz would
  // cross to the other core's GEMM tiles: 1024 x 256 -> 10, 106 -> 93 us)
  for_tiles(nt, gemm_flops, [&](int64_t t) {
    const int64_t r0 = tr.begin(t), rows = tr.size(t);
    double* acc = partial + t * out;
    if constexpr (A == Act::Identity) {
      column_sums(dy + r0 * out, acc, rows, out);
    } else if constexpr (A == Act::Softmax) {
      softmax_grad_rows(dy + r0 * out, saved + r0 * out, dz + r0 * out, acc, rows, out);
    } else {
      grad_rows<A>(dy + r0 * out, saved + r0 * out, dz + r0 * out, acc, rows, out, slope);
    }
  });
  if (db) {
    for (int64_t c = 0; c < out; ++c) {
      double sum = 0.0;
      for (int64_t t = 0; t < nt; ++t) sum += partial[size_t(t * out + c)];
      db[c] = accumulate ? T(double(db[c]) + sum) : T(sum);
    }
  }
  for_tiles(nw + nx, gemm_flops, [&](int64_t t) {
    if (t < nw) {
      gw.run(t);
    } else {
      gx.run(t - nw);
    }
  });
}

}  // namespace

template <typename T>
void dense_forward(const T* x, const T* w, const T* b, T* y, T* z, int64_t B, int64_t in,
                   int64_t out, Act act, T slope) {
  switch (act) {
    case Act::Identity: return forward_impl<Act::Identity>(x, w, b, y, z, B, in, out, slope);
    case Act::Relu: return forward_impl<Act::Relu>(x, w, b, y, z, B, in, out, slope);
    case Act::LeakyRelu: return forward_impl<Act::LeakyRelu>(x, w, b, y, z, B, in, out, slope);
    case Act::Sigmoid: return forward_impl<Act::Sigmoid>(x, w, b, y, z, B, in, out, slope);
    case Act::Tanh: return forward_impl<Act::Tanh>(x, w, b, y, z, B, in, out, slope);
    case Act::GeluErf: return forward_impl<Act::GeluErf>(x, w, b, y, z, B, in, out, slope);
    case Act::GeluTanh: return forward_impl<Act::GeluTanh>(x, w, b, y, z, B, in, out, slope);
    case Act::Softmax: return forward_impl<Act::Softmax>(x, w, b, y, z, B, in, out, slope);
  }
}

template <typename T>
void dense_backward(const T* dy, const T* x, const T* w, const T* saved, T* dz, T* dx, T* dw,
                    T* db, int64_t B, int64_t in, int64_t out, Act act, T slope,
                    bool accumulate) {
#define FT_BACKWARD(A) \
  return backward_impl<A>(dy, x, w, saved, dz, dx, dw, db, B, in, out, slope, accumulate)
  switch (act) {
    case Act::Identity: FT_BACKWARD(Act::Identity);
    case Act::Relu: FT_BACKWARD(Act::Relu);
    case Act::LeakyRelu: FT_BACKWARD(Act::LeakyRelu);
    case Act::Sigmoid: FT_BACKWARD(Act::Sigmoid);
    case Act::Tanh: FT_BACKWARD(Act::Tanh);
    case Act::GeluErf: FT_BACKWARD(Act::GeluErf);
    case Act::GeluTanh: FT_BACKWARD(Act::GeluTanh);
    case Act::Softmax: FT_BACKWARD(Act::Softmax);
  }
#undef FT_BACKWARD
}

template void dense_forward<float>(const float*, const float*, const float*, float*, float*,
                                   int64_t, int64_t, int64_t, Act, float);
template void dense_forward<double>(const double*, const double*, const double*, double*,
                                    double*, int64_t, int64_t, int64_t, Act, double);
template void dense_backward<float>(const float*, const float*, const float*, const float*,
                                    float*, float*, float*, float*, int64_t, int64_t, int64_t,
                                    Act, float, bool);
template void dense_backward<double>(const double*, const double*, const double*,
                                     const double*, double*, double*, double*, double*, int64_t,
                                     int64_t, int64_t, Act, double, bool);

}  // namespace fusedtrain::cpu

// Loss and dropout loops on the CPU. The per-element and per-row math lives
// in fusedtrain/loss_math.h and fusedtrain/philox.h (shared with CUDA); the
// loops here are compiled three times (AVX-512, AVX2 + FMA, baseline) and the
// best one is picked at load time, as in optim_cpu.cpp.
//
// Sums use 16 fixed lanes (element k of a row or block goes to lane k % 16)
// combined by a fixed tree, so a result does not depend on the SIMD width the
// compiler picks, and blocks that do not depend on the thread count, so it
// does not depend on the thread split either. Per-row work runs in tiles of
// rows (see ce_rows) so that short rows still give long vector loops; float32
// rows of at most 16 classes run 16 rows to a vector where AVX-512 is there
// (ce_rows_narrow).
#include "cpu/loss_cpu.h"

#include <omp.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/philox_cpu.h"
#include "cpu/simd.h"
#include "fusedtrain/philox.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#include <immintrin.h>
#define FT_X86_NARROW_CE 1
#endif

namespace fusedtrain::cpu {

namespace {

constexpr int kLanes = 16;
constexpr int64_t kCeRowBlock = 16;      // rows per partial sum (cross-entropy)
constexpr int64_t kReduceBlock = 4096;   // elements per partial sum (BCE, MSE)
constexpr int64_t kLabelBlock = 4096;    // labels per partial sum of D
// The exponential losses cost several times what a memory-bound element
// does (threads_for's unit): they take a second thread from fewer elements.
constexpr int64_t kExpLossWeight = 4;

// Sum of the 16 lanes in a fixed order (a balanced tree).
FT_HD double lane_sum(const double* a) {
  double s8[8];
  for (int j = 0; j < 8; ++j) s8[j] = a[j] + a[j + 8];
  for (int j = 0; j < 4; ++j) s8[j] = s8[j] + s8[j + 4];
  return (s8[0] + s8[2]) + (s8[1] + s8[3]);
}

// fn(b0, b1) over consecutive ranges of blocks, each block exactly once.
// Threads take chunks of about 1/8 of their share from a shared counter
// (dynamic schedule), so a thread that the OS runs late (another process on
// its core) does less of the work instead of holding everyone up. Which
// thread runs a block changes; what a block computes does not.
template <class Fn>
void parallel_blocks(int64_t nblocks, int nt, Fn&& fn) {
  nt = int(std::min<int64_t>(nt, nblocks));
  if (nt <= 1) {
    if (nblocks > 0) fn(int64_t(0), nblocks);
    return;
  }
  const int64_t chunk = std::max<int64_t>(1, nblocks / (8 * int64_t(nt)));
  const int64_t nchunks = (nblocks + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t ch = 0; ch < nchunks; ++ch) fn(ch * chunk, std::min(nblocks, (ch + 1) * chunk));
}

template <typename T>
T* at(void* p) {
  return static_cast<T*>(p);
}
template <typename T>
const T* at(const void* p) {
  return static_cast<const T*>(p);
}

// ---------------------------------------------------------------------------
// cross-entropy: label check and D
// ---------------------------------------------------------------------------
template <typename L, typename T, ClassWeights CW>
int64_t ce_prepare_typed(const L* labels, int64_t n, int64_t c, int64_t ignore_index,
                         const T* weight, int64_t* index, double* denom) {
  const int64_t nblocks = (n + kLabelBlock - 1) / kLabelBlock;
  std::vector<double> part(size_t(nblocks), 0.0);
  std::vector<int64_t> bad(size_t(nblocks), -1);
  parallel_blocks(nblocks, threads_for(n), [&](int64_t b0, int64_t b1) {
    // (local copies: through the captured references the compiler reloads
    // the pointers after every store to index)
    const L* const lab = labels;
    int64_t* const idx = index;
    for (int64_t b = b0; b < b1; ++b) {
      double d = 0.0;
      const int64_t hi = std::min(n, (b + 1) * kLabelBlock);
      for (int64_t i = b * kLabelBlock; i < hi; ++i) {
        const L l = lab[i];
        // unsigned 64-bit labels above INT64_MAX are out of range
        const bool fits = std::is_signed_v<L> || sizeof(L) < 8 ||
                          uint64_t(l) <= uint64_t(std::numeric_limits<int64_t>::max());
        const int64_t y = int64_t(l);
        if (fits && y == ignore_index) {
          idx[i] = -1;
        } else if (fits && y >= 0 && y < c) {
          idx[i] = y;
          if constexpr (CW == ClassWeights::On) {
            d += double(weight[y]);
          } else {
            d += 1.0;
          }
        } else {
          bad[size_t(b)] = i;
          break;
        }
      }
      part[size_t(b)] = d;
    }
  });
  double d = 0.0;
  for (int64_t b = 0; b < nblocks; ++b) {
    if (bad[size_t(b)] >= 0) return bad[size_t(b)];
    d += part[size_t(b)];
  }
  *denom = d;
  return -1;
}

template <typename T, ClassWeights CW>
int64_t ce_prepare_labels(const LabelView& lv, int64_t n, int64_t c, int64_t ig, const T* w,
                          int64_t* index, double* denom) {
  const void* p = lv.data;
  switch (lv.itemsize * (lv.is_signed ? 1 : -1)) {
    case 1: return ce_prepare_typed<int8_t, T, CW>(at<int8_t>(p), n, c, ig, w, index, denom);
    case 2: return ce_prepare_typed<int16_t, T, CW>(at<int16_t>(p), n, c, ig, w, index, denom);
    case 4: return ce_prepare_typed<int32_t, T, CW>(at<int32_t>(p), n, c, ig, w, index, denom);
    case 8: return ce_prepare_typed<int64_t, T, CW>(at<int64_t>(p), n, c, ig, w, index, denom);
    case -1: return ce_prepare_typed<uint8_t, T, CW>(at<uint8_t>(p), n, c, ig, w, index, denom);
    case -2: return ce_prepare_typed<uint16_t, T, CW>(at<uint16_t>(p), n, c, ig, w, index, denom);
    case -4: return ce_prepare_typed<uint32_t, T, CW>(at<uint32_t>(p), n, c, ig, w, index, denom);
    default: return ce_prepare_typed<uint64_t, T, CW>(at<uint64_t>(p), n, c, ig, w, index, denom);
  }
}

// Row helpers, inlined into each SIMD clone of the loops below. Each is one
// plain loop that GCC vectorises; sums go to 16 fixed double lanes.
#define FT_INLINE inline __attribute__((always_inline))

// Row max. The order of a max does not change it (a NaN need not win here:
// it reaches the sum of exponentials), so the compiler may reorder it.
template <typename T>
FT_INLINE T row_max(const T* x, int64_t c) {
  T m = -std::numeric_limits<T>::infinity();
  if (c < 64) {  // short rows: the SIMD reduction's set-up costs more than it saves;
    T m1 = m, m2 = m, m3 = m;  // four chains instead of one long one
    int64_t k = 0;
    for (; k + 4 <= c; k += 4) {
      m = x[k] > m ? x[k] : m;
      m1 = x[k + 1] > m1 ? x[k + 1] : m1;
      m2 = x[k + 2] > m2 ? x[k + 2] : m2;
      m3 = x[k + 3] > m3 ? x[k + 3] : m3;
    }
    for (; k < c; ++k) m = x[k] > m ? x[k] : m;
    m = m1 > m ? m1 : m;
    m2 = m3 > m2 ? m3 : m2;
    return m2 > m ? m2 : m;
  }
  // long rows: 64 lanes (four vectors of 16 floats), so that the maxima of
  // consecutive vectors do not wait on each other
  constexpr int kMaxLanes = 64;
  T acc[kMaxLanes];
  for (int j = 0; j < kMaxLanes; ++j) acc[j] = m;
  int64_t k = 0;
  for (; k + kMaxLanes <= c; k += kMaxLanes)
    for (int j = 0; j < kMaxLanes; ++j) acc[j] = x[k + j] > acc[j] ? x[k + j] : acc[j];
  for (; k + kLanes <= c; k += kLanes)  // then whole groups of 16, then one at a time
    for (int j = 0; j < kLanes; ++j) acc[j] = x[k + j] > acc[j] ? x[k + j] : acc[j];
  for (; k < c; ++k) m = x[k] > m ? x[k] : m;
  for (int j = 0; j < kMaxLanes; ++j) m = acc[j] > m ? acc[j] : m;
  return m;
}

// Sums keep 16 lanes in a local array that only the main loop indexes (a
// tail that indexed it too would stop GCC from keeping them in registers);
// the elements after the last whole group of 16 go to separate chains.

// sum_k double(v[k]): element k to lane k % 16 for the whole groups of 16,
// the rest to four chains in turn; lane tree + chains
template <typename T>
FT_INLINE double lanes_sum(const T* v, int64_t c) {
  double acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = 0.0;
  int64_t k = 0;
  for (; k + kLanes <= c; k += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += double(v[k + j]);
  // the rest (all of a short row): four chains, (t0 + t1) + (t2 + t3)
  double t[4] = {0.0, 0.0, 0.0, 0.0};
  for (int j = 0; k < c; ++k, j = (j + 1) & 3) t[j] += double(v[k]);
  return lane_sum(acc) + ((t[0] + t[1]) + (t[2] + t[3]));
}

// g[k] = exp(x[k] - m) for the 16 elements of one group, each added to its
// lane of f
template <typename T>
FT_INLINE void exp_group(const T* x, T* g, T m, T* f) {
  for (int j = 0; j < kLanes; ++j) {
    const T e = ft_exp_nonpos(x[j] - m);
    g[j] = e;
    f[j] += e;
  }
}

// g[k] = exp(x[k] - m) and the sum of the g[k], in one loop (long rows). x
// may be g (each element is read before it is written). Element k goes to
// lane k % 16; the lanes add in T over blocks of kSumBlock elements (float
// additions run at twice the rate of conversions and double additions; a
// lane's error then stays within 16 roundings) and each block's lanes into
// double lanes. The last c % 16 elements run as one more group, padded with
// -inf (exp gives 0, which adds nothing), instead of one exponential at a time.
constexpr int64_t kSumBlock = 256;

template <typename T>
FT_INLINE double exp_lanes_sum(const T* x, T* g, T m, int64_t c) {
  double acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = 0.0;
  const int64_t whole = c / kLanes * kLanes;
  for (int64_t k0 = 0; k0 < c; k0 += kSumBlock) {
    T f[kLanes];
    for (int j = 0; j < kLanes; ++j) f[j] = T(0);
    const int64_t k1 = std::min(whole, k0 + kSumBlock);
    for (int64_t k = k0; k < k1; k += kLanes) exp_group(x + k, g + k, m, f);
    if (k1 < k0 + kSumBlock && whole < c) {  // the last block: the tail group
      T xb[kLanes], gb[kLanes];
      const int64_t rest = c - whole;
      for (int j = 0; j < kLanes; ++j)
        xb[j] = j < rest ? x[whole + j] : -std::numeric_limits<T>::infinity();
      exp_group(xb, gb, m, f);
      for (int64_t j = 0; j < rest; ++j) g[whole + j] = gb[j];
    }
    for (int j = 0; j < kLanes; ++j) acc[j] += double(f[j]);
  }
  return lane_sum(acc);
}

template <ClassWeights CW, typename T>
FT_INLINE double shifted_term(const T* x, const T* w, T m, int64_t k) {
  const T xs = x[k] - m;
  return double(CW == ClassWeights::On ? w[k] * xs : xs);
}

// sum_k double(w[k] * (x[k] - m)) (or of x[k] - m without weights): 16 lanes,
// the rest in order into one chain
template <ClassWeights CW, typename T>
FT_INLINE double lanes_sum_shifted(const T* x, const T* w, T m, int64_t c) {
  double acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = 0.0;
  int64_t k = 0;
  for (; k + kLanes <= c; k += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += shifted_term<CW>(x, w, m, k + j);
  double tail = 0.0;
  for (; k < c; ++k) tail += shifted_term<CW>(x, w, m, k);
  return lane_sum(acc) + tail;
}

// Per row, from its reductions: the loss and the gradient's coefficients
// (ce_row). One loop without branches, which GCC runs several rows to a
// vector (ignored rows come with S = 1, w_y = 0).
template <typename T>
FT_INLINE void ce_coefficients(int64_t nr, const double* sum_exp, const T* xs_label,
                               const double* wxs, const double* w_label, const CeScalars& s,
                               double* loss, T* coef_e, T* coef_y) {
  for (int64_t i = 0; i < nr; ++i) {
    const CeRow<T> r =
        ce_row<T>(sum_exp[i], ft_log_poly(sum_exp[i]), xs_label[i], wxs[i], w_label[i], s);
    loss[i] = r.loss;
    coef_e[i] = r.coef_e;
    coef_y[i] = r.coef_y;
  }
}

// ---------------------------------------------------------------------------
// cross-entropy: the fused rows
// x, g are (n, c) (g may be x: InPlace, then x is not used), w is (c,),
// index is (n,), loss_rows is (n,) (Reduction::None) or partials is
// (n / kCeRowBlock,) (otherwise); rows [r0, r1) are whole blocks.
//
// Rows go in tiles of about kTileElems elements (one row when c is large,
// many when c is small, so that the exponentials always run as one long
// vector loop), in sweeps that keep the tile in L1:
//   A (per row)   m = max x; (smoothing) sum w (x - m); g = x - m
//   B (flat)      g = exp(g)    (one row per tile: g = exp(x - m), no A store)
//   C (per row)   S = sum g     (one row per tile: in B's loop)
//   D (over rows) log S, the row's loss and gradient coefficients (CeRow)
//   E (per row)   g = g * coef_e - coef_w * w; g_y -= coef_y
// so memory sees one read of x and one write of g. Ignored rows get S = 1,
// w_y = 0 (so a zero loss) and a zero gradient.
// ---------------------------------------------------------------------------
constexpr int64_t kTileElems = 1024;

template <Smoothing SM, ClassWeights CW, bool InPlace, bool PerRow, typename T>
FT_CLONES_FMA void ce_rows(const T* __restrict x_in, T* __restrict g_out, const T* __restrict w,
                       const int64_t* __restrict index, T* __restrict loss_rows,
                       double* __restrict partials, int64_t r0, int64_t r1, int64_t c,
                       const CeScalars s) {
  const int64_t tile = std::max<int64_t>(1, kTileElems / c);
  // per-row values of one tile
  T row_m[kTileElems], xs_label[kTileElems], coef_e[kTileElems], coef_y[kTileElems];
  double sum_exp[kTileElems], wxs[kTileElems], w_label[kTileElems], loss[kTileElems];
  const bool flat = tile > 1;  // several rows per tile: B runs over the tile at once
  const T coef_w = T(s.eps_over_c * s.scale);
  double block_sum = 0.0;
  for (int64_t t0 = r0; t0 < r1; t0 += tile) {
    const int64_t nr = std::min(r1 - t0, tile);
    // in place, reading x through g's pointer tells the compiler that x[k]
    // and g[k] are one element (read before it is written)
    const T* xt = (InPlace ? g_out : x_in) + t0 * c;
    T* gt = g_out + t0 * c;
    const int64_t* yt = index + t0;
    // The next tile's logits are fetched while this one computes: rows are a
    // few KB, and the hardware prefetcher, which stops at page boundaries,
    // would leave the first lines of each new row to a full memory latency.
    // (Prefetching the gradient lines for writing measured slower.)
    if (t0 + tile < r1) {
      const char* nx = reinterpret_cast<const char*>(xt + nr * c);
      const int64_t bytes = std::min(r1 - t0 - nr, tile) * c * int64_t(sizeof(T));
      for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(nx + off, 0);
    }
    // A
    for (int64_t i = 0; i < nr; ++i) {
      const T* x = xt + i * c;
      T* g = gt + i * c;
      const int64_t y = yt[i];
      if (y < 0) {  // ignore_index: zeroed in E (and fed zeros to a flat B)
        xs_label[i] = T(0);
        wxs[i] = 0.0;
        w_label[i] = 0.0;
        if (flat) {
          for (int64_t k = 0; k < c; ++k) g[k] = T(0);
        }
        continue;
      }
      const T m = row_max(x, c);
      wxs[i] = SM == Smoothing::On ? lanes_sum_shifted<CW>(x, w, m, c) : 0.0;
      xs_label[i] = x[y] - m;
      w_label[i] = CW == ClassWeights::On ? double(w[y]) : 1.0;
      row_m[i] = m;
      if (flat) {
        for (int64_t k = 0; k < c; ++k) g[k] = x[k] - m;
      }
    }
    // B
    if (flat) {
      const int64_t len = nr * c;
      for (int64_t k = 0; k < len; ++k) gt[k] = ft_exp_nonpos(gt[k]);
      // C
      for (int64_t i = 0; i < nr; ++i) sum_exp[i] = yt[i] < 0 ? 1.0 : lanes_sum(gt + i * c, c);
    } else {  // long rows: the shift and C go into the same loop
      for (int64_t i = 0; i < nr; ++i)
        sum_exp[i] = yt[i] < 0 ? 1.0 : exp_lanes_sum(xt + i * c, gt + i * c, row_m[i], c);
    }
    // D
    ce_coefficients(nr, sum_exp, xs_label, wxs, w_label, s, loss, coef_e, coef_y);
    // E
    for (int64_t i = 0; i < nr; ++i) {
      T* g = gt + i * c;
      const int64_t y = yt[i];
      if (y < 0) {
        for (int64_t k = 0; k < c; ++k) g[k] = T(0);
      } else {
        const T ce = coef_e[i];
        for (int64_t k = 0; k < c; ++k)
          g[k] = ce_grad<SM>(g[k], CW == ClassWeights::On ? w[k] : T(1), ce, coef_w);
        g[y] = g[y] - coef_y[i];
      }
      const int64_t row = t0 + i;
      if constexpr (PerRow) {
        loss_rows[row] = T(loss[i]);
      } else {
        block_sum += loss[i];
        if ((row + 1) % kCeRowBlock == 0 || row + 1 == r1) {
          partials[row / kCeRowBlock] = block_sum;
          block_sum = 0.0;
        }
      }
    }
  }
}

#ifdef FT_X86_NARROW_CE
// ---------------------------------------------------------------------------
// cross-entropy, float32 rows of at most 16 classes, on AVX-512: groups of
// 16 rows (one kCeRowBlock), rows [r0, r1) whole groups.
//
// With so few classes ce_rows' per-row steps (max, sum, log, label) cost
// several times the exponentials. Here they run for 16 rows at once, one
// row per vector lane:
//   - a row's reduction: the 16 rows, each loaded into a vector (masked to
//     its c classes), are reduced together by a transposing tree (16 -> 8 ->
//     4 -> 2 -> 1 vectors, each step pairing lanes of two vectors), which
//     leaves row i's result in lane i;
//   - a row's value at each element: a lane permutation of the 16 rows'
//     values, whose pattern (row of each element of the flat block) depends
//     on c only;
//   - the exponentials and the gradient: ce_rows' per-element math over the
//     group's 16 c elements as one flat loop.
// The sums (of exponentials; with smoothing, of w (x - m)) add in float in
// that fixed tree: the result depends on c and the group, never on the
// thread count.
// ---------------------------------------------------------------------------
constexpr int64_t kNarrowClasses = 16;

#define FT_AVX512 __attribute__((target("avx512f")))
// GCC 12 warns inside its own AVX-512 headers (an "undefined" vector the
// intrinsics start from: GCC bug 105593)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Index vectors of the transposing tree's step of half-width h (8, 4, 2, 1):
// inputs a, b hold 16 / (2h) rows of 2h lanes each; the output holds a's
// rows, then b's, h lanes each, lane q of a row combining its lanes q and
// q + h (lo picks the first, hi the second; 16 + k is lane k of b).
struct TreeIndex {
  __m512i lo[4], hi[4];
};

FT_AVX512 TreeIndex make_tree_index() {
  TreeIndex t;
  for (int s = 0; s < 4; ++s) {
    const int h = 8 >> s, rows = 16 / (2 * h);
    alignas(64) int32_t lo[16], hi[16];
    for (int r = 0; r < 2 * rows; ++r)
      for (int q = 0; q < h; ++q) {
        const int src = (r < rows ? 0 : 16) + (r % rows) * 2 * h + q;
        lo[r * h + q] = src;
        hi[r * h + q] = src + h;
      }
    t.lo[s] = _mm512_load_si512(lo);
    t.hi[s] = _mm512_load_si512(hi);
  }
  return t;
}

// v[0..15] -> lane i = op over the lanes of v[i] (v is overwritten)
template <bool kMax>
FT_AVX512 inline __m512 tree_reduce(__m512* v, const TreeIndex& t) {
  for (int s = 0, n = 16; s < 4; ++s, n /= 2)
    for (int i = 0; i < n / 2; ++i) {
      const __m512 lo = _mm512_permutex2var_ps(v[2 * i], t.lo[s], v[2 * i + 1]);
      const __m512 hi = _mm512_permutex2var_ps(v[2 * i], t.hi[s], v[2 * i + 1]);
      v[i] = kMax ? _mm512_max_ps(lo, hi) : _mm512_add_ps(lo, hi);
    }
  return v[0];
}

// lanes 8..15 (AVX-512F has no float extract of 8 lanes: DQ's)
FT_AVX512 inline __m256 upper_half(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

template <Smoothing SM, ClassWeights CW, bool InPlace, bool PerRow>
FT_AVX512 void ce_rows_narrow(const float* __restrict x_in, float* __restrict g_out,
                              const float* __restrict w, const int64_t* __restrict index,
                              float* __restrict loss_rows, double* __restrict partials,
                              int64_t r0, int64_t r1, int64_t c, const CeScalars s) {
  constexpr int kG = int(kCeRowBlock);  // rows per group: one row per lane
  static_assert(kG == 16 && kLanes == 16, "one row per lane of a 16-float vector");
  const TreeIndex tree = make_tree_index();
  const __mmask16 cmask = __mmask16((1u << c) - 1u);
  const int64_t len = kG * c;  // elements of a group, c vectors
  // the row of each element of a group's flat block, and (with class
  // weights) each element's weight
  __m512i row_of[kNarrowClasses];
  alignas(64) float w_flat[kG * kNarrowClasses];
  for (int64_t v = 0; v < c; ++v) {
    alignas(64) int32_t ro[16];
    for (int j = 0; j < 16; ++j) {
      ro[j] = int32_t((16 * v + j) / c);
      if constexpr (CW == ClassWeights::On) w_flat[16 * v + j] = w[(16 * v + j) % c];
    }
    row_of[v] = _mm512_load_si512(ro);
  }
  const __m512 wv = CW == ClassWeights::On ? _mm512_maskz_loadu_ps(cmask, w) : _mm512_set1_ps(1.0f);
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const float coef_w = float(s.eps_over_c * s.scale);
  alignas(64) float shift[kG * kNarrowClasses], m16[kG], xs_label[kG], coef_e[kG];
  alignas(64) double sum_exp[kG], wxs[kG] = {}, w_label[kG], loss[kG];
  float coef_y[kG];
  __m512 v[kG];
  for (int64_t g0 = r0; g0 < r1; g0 += kG) {
    const float* xg = (InPlace ? g_out : x_in) + g0 * c;
    float* gg = g_out + g0 * c;
    const int64_t* yg = index + g0;
    // row maxima (lanes past c read as -inf)
    for (int i = 0; i < kG; ++i) v[i] = _mm512_mask_loadu_ps(ninf, cmask, xg + i * c);
    const __m512 m = tree_reduce<true>(v, tree);
    _mm512_store_ps(m16, m);
    // with smoothing, sum_c w_c (x_c - m) (lanes past c are 0)
    __m512 wxs_f = _mm512_setzero_ps();
    if constexpr (SM == Smoothing::On) {
      for (int i = 0; i < kG; ++i) {
        const __m512 xs = _mm512_maskz_sub_ps(cmask, _mm512_maskz_loadu_ps(cmask, xg + i * c),
                                              _mm512_set1_ps(m16[i]));
        v[i] = CW == ClassWeights::On ? _mm512_mul_ps(wv, xs) : xs;
      }
      wxs_f = tree_reduce<false>(v, tree);
    }
    // the label's logit (before an in-place pass overwrites it)
    bool any_ignored = false;
    for (int i = 0; i < kG; ++i) {
      const int64_t y = yg[i];
      any_ignored |= y < 0;
      xs_label[i] = y < 0 ? 0.0f : xg[i * c + y] - m16[i];
      w_label[i] = y < 0 ? 0.0 : CW == ClassWeights::On ? double(w[y]) : 1.0;
    }
    // exponentials over the flat block, each element shifted by its row's max
    for (int64_t k = 0; k < c; ++k)
      _mm512_store_ps(shift + 16 * k, _mm512_permutexvar_ps(row_of[k], m));
    for (int64_t k = 0; k < len; ++k) gg[k] = ft_exp_nonpos(xg[k] - shift[k]);
    // their row sums (lanes past c are 0), in double from here on
    for (int i = 0; i < kG; ++i) v[i] = _mm512_maskz_loadu_ps(cmask, gg + i * c);
    const __m512 sums = tree_reduce<false>(v, tree);
    _mm512_store_pd(sum_exp, _mm512_cvtps_pd(_mm512_castps512_ps256(sums)));
    _mm512_store_pd(sum_exp + 8, _mm512_cvtps_pd(upper_half(sums)));
    if constexpr (SM == Smoothing::On) {
      _mm512_store_pd(wxs, _mm512_cvtps_pd(_mm512_castps512_ps256(wxs_f)));
      _mm512_store_pd(wxs + 8, _mm512_cvtps_pd(upper_half(wxs_f)));
    }
    if (any_ignored) {  // ignored rows: S = 1, no smoothing term (and w_y = 0 above)
      for (int i = 0; i < kG; ++i)
        if (yg[i] < 0) {
          sum_exp[i] = 1.0;
          wxs[i] = 0.0;
        }
    }
    // per row: loss and gradient coefficients
    ce_coefficients(kG, sum_exp, xs_label, wxs, w_label, s, loss, coef_e, coef_y);
    // gradient: ce_grad over the flat block, each element with its row's
    // coef_e (in shift's place) and its class weight; then the label's
    // element less coef_y
    const __m512 ce16 = _mm512_load_ps(coef_e);
    for (int64_t k = 0; k < c; ++k)
      _mm512_store_ps(shift + 16 * k, _mm512_permutexvar_ps(row_of[k], ce16));
    for (int64_t k = 0; k < len; ++k)
      gg[k] = ce_grad<SM>(gg[k], CW == ClassWeights::On ? w_flat[k] : 1.0f, shift[k], coef_w);
    double block_sum = 0.0;
    for (int i = 0; i < kG; ++i) {
      const int64_t y = yg[i];
      float* gr = gg + i * c;
      if (y < 0) {
        for (int64_t k = 0; k < c; ++k) gr[k] = 0.0f;
      } else {
        gr[y] = gr[y] - coef_y[i];
      }
      if constexpr (PerRow) {
        loss_rows[g0 + i] = float(loss[i]);
      } else {
        block_sum += loss[i];
      }
    }
    if constexpr (!PerRow) partials[g0 / kCeRowBlock] = block_sum;
  }
}

#pragma GCC diagnostic pop

bool narrow_ce_supported() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}
#endif  // FT_X86_NARROW_CE

template <typename T, Smoothing SM, ClassWeights CW, bool InPlace, bool PerRow>
double ce_run(const CeArgs& a, const int64_t* index, double denom) {
  const CeScalars s = [&] {
    double wt = double(a.c);
    if (CW == ClassWeights::On) {
      wt = 0.0;
      for (int64_t k = 0; k < a.c; ++k) wt += double(at<T>(a.weight)[k]);
    }
    return make_ce_scalars(a.label_smoothing, a.c, wt, a.reduction, denom);
  }();
  const int64_t nblocks = (a.n + kCeRowBlock - 1) / kCeRowBlock;
  std::vector<double> partials(PerRow ? 0 : size_t(nblocks), 0.0);
  parallel_blocks(nblocks, threads_for(a.n * a.c * kExpLossWeight), [&](int64_t b0, int64_t b1) {
    int64_t r0 = b0 * kCeRowBlock;
    const int64_t r1 = std::min(a.n, b1 * kCeRowBlock);
#ifdef FT_X86_NARROW_CE
    if constexpr (std::is_same_v<T, float>) {
      if (a.c <= kNarrowClasses && narrow_ce_supported()) {  // whole groups of 16 rows
        const int64_t r_whole = r0 + (r1 - r0) / kCeRowBlock * kCeRowBlock;
        ce_rows_narrow<SM, CW, InPlace, PerRow>(at<float>(a.logits), at<float>(a.out),
                                                at<float>(a.weight), index, at<float>(a.loss_rows),
                                                partials.data(), r0, r_whole, a.c, s);
        r0 = r_whole;
      }
    }
#endif
    if (r0 < r1)
      ce_rows<SM, CW, InPlace, PerRow, T>(at<T>(a.logits), at<T>(a.out), at<T>(a.weight), index,
                                          at<T>(a.loss_rows), partials.data(), r0, r1, a.c, s);
  });
  if (PerRow) return 0.0;
  double total = 0.0;
  for (double p : partials) total += p;
  return a.reduction == Reduction::Mean ? total / denom : total;
}

template <typename T, Smoothing SM, ClassWeights CW>
double ce_pick(const CeArgs& a, const int64_t* index, double denom) {
  const bool in_place = a.out == a.logits;
  const bool per_row = a.reduction == Reduction::None;
  if (in_place) {
    return per_row ? ce_run<T, SM, CW, true, true>(a, index, denom)
                   : ce_run<T, SM, CW, true, false>(a, index, denom);
  }
  return per_row ? ce_run<T, SM, CW, false, true>(a, index, denom)
                 : ce_run<T, SM, CW, false, false>(a, index, denom);
}

template <typename T>
double ce_typed(const CeArgs& a, const int64_t* index, double denom) {
  const bool sm = a.label_smoothing != 0.0, cw = a.weight != nullptr;
  using S = Smoothing;
  using W = ClassWeights;
  if (sm) {
    return cw ? ce_pick<T, S::On, W::On>(a, index, denom)
              : ce_pick<T, S::On, W::Off>(a, index, denom);
  }
  return cw ? ce_pick<T, S::Off, W::On>(a, index, denom)
            : ce_pick<T, S::Off, W::Off>(a, index, denom);
}

// ---------------------------------------------------------------------------
// element-wise losses: one block of at most kReduceBlock elements
// (PerElem: loss written per element; otherwise the block's sum returned)
// ---------------------------------------------------------------------------
template <Elementwise K, bool PerElem, typename T>
FT_CLONES_FMA double elementwise_block(const T* __restrict a, const T* __restrict b,
                                   T* __restrict grad, T* __restrict loss, int64_t n,
                                   const T scale) {
  if constexpr (PerElem) {
    for (int64_t i = 0; i < n; ++i) elementwise_loss<K>(a[i], b[i], scale, loss[i], grad[i]);
    return 0.0;
  } else {
    T tmp[kReduceBlock];  // the block's losses, summed below (n <= kReduceBlock)
    for (int64_t i = 0; i < n; ++i) elementwise_loss<K>(a[i], b[i], scale, tmp[i], grad[i]);
    return lanes_sum(tmp, n);
  }
}

template <Elementwise K, typename T>
double elementwise_typed(const void* a_, const void* b_, void* grad_, void* loss_, int64_t n,
                         Reduction r) {
  const T* a = at<T>(a_);
  const T* b = at<T>(b_);
  T* grad = at<T>(grad_);
  T* loss = at<T>(loss_);
  const T scale = elementwise_grad_scale<K, T>(r, n);
  const int64_t nblocks = (n + kReduceBlock - 1) / kReduceBlock;
  const int nt = threads_for(K == Elementwise::Bce ? n * kExpLossWeight : n);
  if (r == Reduction::None) {
    parallel_blocks(nblocks, nt, [&](int64_t b0, int64_t b1) {
      const int64_t lo = b0 * kReduceBlock, hi = std::min(n, b1 * kReduceBlock);
      elementwise_block<K, true, T>(a + lo, b + lo, grad + lo, loss + lo, hi - lo, scale);
    });
    return 0.0;
  }
  std::vector<double> partials(size_t(nblocks), 0.0);
  parallel_blocks(nblocks, nt, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t lo = blk * kReduceBlock, hi = std::min(n, lo + kReduceBlock);
      partials[size_t(blk)] =
          elementwise_block<K, false, T>(a + lo, b + lo, grad + lo, nullptr, hi - lo, scale);
    }
  });
  double total = 0.0;
  for (double p : partials) total += p;
  return r == Reduction::Mean ? total / double(n) : total;  // n = 0: NaN, as torch
}

// ---------------------------------------------------------------------------
// dropout: elements [i0, i1) of x (n,), i0 a multiple of 4. Chunks of
// kDropChunk elements: first their Philox words (one loop over blocks, which
// GCC vectorises across blocks), then the mask and y (one loop over elements).
// ---------------------------------------------------------------------------
constexpr int64_t kDropChunk = 1024;

template <typename T>
FT_CLONES_BW void dropout_range(const T* __restrict x, T* __restrict y, uint8_t* __restrict mask,
                             int64_t i0, int64_t i1, uint64_t seed, uint64_t offset,
                             uint32_t threshold, const T scale) {
  uint32_t words[kDropChunk];
  for (int64_t lo = i0; lo < i1; lo += kDropChunk) {
    const int64_t len = std::min(kDropChunk, i1 - lo);
    philox_words(words, uint64_t(lo / 4), (len + 3) / 4, seed, offset);
    for (int64_t i = 0; i < len; ++i) {
      const bool keep = words[i] >= threshold;
      mask[lo + i] = uint8_t(keep);
      y[lo + i] = dropout_apply(x[lo + i], keep, scale);
    }
  }
}

template <typename T>
FT_CLONES_BW void dropout_backward_range(const T* __restrict dy, const uint8_t* __restrict mask,
                                      T* __restrict dx, int64_t n, const T scale) {
  for (int64_t i = 0; i < n; ++i) dx[i] = dropout_apply(dy[i], mask[i] != 0, scale);
}

// Element ranges [lo, hi) of whole blocks of kDropBlock elements (so lo is a
// multiple of 4, as dropout_range needs).
constexpr int64_t kDropBlock = 8192;

template <class Fn>
void parallel_range(int64_t n, Fn&& fn) {
  const int64_t nblocks = (n + kDropBlock - 1) / kDropBlock;
  parallel_blocks(nblocks, threads_for(n), [&](int64_t b0, int64_t b1) {
    fn(b0 * kDropBlock, std::min(n, b1 * kDropBlock));
  });
}

template <typename T>
void dropout_typed(const void* x, void* y, uint8_t* mask, int64_t n, double p, uint64_t seed,
                   uint64_t offset) {
  const uint32_t thr = dropout_threshold(p);
  const T scale = T(1.0 / (1.0 - p));
  parallel_range(n, [&](int64_t lo, int64_t hi) {
    dropout_range<T>(at<T>(x), at<T>(y), mask, lo, hi, seed, offset, thr, scale);
  });
}

template <typename T>
void dropout_backward_typed(const void* dy, const uint8_t* mask, void* dx, int64_t n, double p) {
  const T scale = T(1.0 / (1.0 - p));
  parallel_range(n, [&](int64_t lo, int64_t hi) {
    dropout_backward_range<T>(at<T>(dy) + lo, mask + lo, at<T>(dx) + lo, hi - lo, scale);
  });
}

}  // namespace

// ---------------------------------------------------------------------------
// entry points
// ---------------------------------------------------------------------------
int64_t ce_prepare(const LabelView& labels, int64_t n, int64_t c, int64_t ignore_index,
                   const void* weight, DType dt, int64_t* index, double* denom) {
  using W = ClassWeights;
  if (dt == DType::F32) {
    const float* w = at<float>(weight);
    return w ? ce_prepare_labels<float, W::On>(labels, n, c, ignore_index, w, index, denom)
             : ce_prepare_labels<float, W::Off>(labels, n, c, ignore_index, w, index, denom);
  }
  const double* w = at<double>(weight);
  return w ? ce_prepare_labels<double, W::On>(labels, n, c, ignore_index, w, index, denom)
           : ce_prepare_labels<double, W::Off>(labels, n, c, ignore_index, w, index, denom);
}

double ce_forward_backward(const CeArgs& a, const int64_t* index, double denom, DType dt) {
  return dt == DType::F32 ? ce_typed<float>(a, index, denom) : ce_typed<double>(a, index, denom);
}

double bce_with_logits(const void* x, const void* t, void* grad, void* loss, int64_t n,
                       Reduction r, DType dt) {
  return dt == DType::F32 ? elementwise_typed<Elementwise::Bce, float>(x, t, grad, loss, n, r)
                          : elementwise_typed<Elementwise::Bce, double>(x, t, grad, loss, n, r);
}

double mse(const void* pred, const void* target, void* grad, void* loss, int64_t n, Reduction r,
           DType dt) {
  return dt == DType::F32
             ? elementwise_typed<Elementwise::Mse, float>(pred, target, grad, loss, n, r)
             : elementwise_typed<Elementwise::Mse, double>(pred, target, grad, loss, n, r);
}

void dropout(const void* x, void* y, uint8_t* mask, int64_t n, double p, uint64_t seed,
             uint64_t offset, DType dt) {
  dt == DType::F32 ? dropout_typed<float>(x, y, mask, n, p, seed, offset)
                   : dropout_typed<double>(x, y, mask, n, p, seed, offset);
}

void dropout_backward(const void* dy, const uint8_t* mask, void* dx, int64_t n, double p,
                      DType dt) {
  dt == DType::F32 ? dropout_backward_typed<float>(dy, mask, dx, n, p)
                   : dropout_backward_typed<double>(dy, mask, dx, n, p);
}

namespace {

// float32 bit patterns [lo, hi), hi <= 2^32
FT_CLONES_FMA int64_t exp_mismatches_f32(uint64_t lo, uint64_t hi) {
  int64_t bad = 0;
  for (uint64_t b = lo; b < hi; ++b) {
    const float x = ft_as_float(uint32_t(b));
    bad += ft_as_uint(ft_exp_nonpos(x)) != ft_as_uint(ft_exp_poly(x));
  }
  return bad;
}

FT_CLONES_FMA int64_t exp_mismatches_f64(const uint64_t* bits, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = ft_as_double(bits[i]);
    bad += ft_as_uint(ft_exp_nonpos(x)) != ft_as_uint(ft_exp_poly(x));
  }
  return bad;
}

}  // namespace

int64_t exp_selfcheck(int64_t stride64) {
  // float32: -0 .. -inf and the negative NaNs (sign bit set: [2^31, 2^32)),
  // +0, the positive NaNs
  constexpr int64_t kChunk = 1 << 20;
  constexpr uint64_t kFirst = uint64_t(1) << 31;
  const int64_t chunks = int64_t(kFirst) / kChunk;
  int64_t bad = exp_mismatches_f32(0, 1) + exp_mismatches_f32(0x7F800001u, kFirst);
#pragma omp parallel for num_threads(num_threads()) reduction(+ : bad) schedule(static)
  for (int64_t c = 0; c < chunks; ++c)
    bad += exp_mismatches_f32(kFirst + uint64_t(c * kChunk), kFirst + uint64_t((c + 1) * kChunk));
  // float64: every stride64-th pattern with the sign bit set, the range's
  // ends and their neighbours, and NaNs of both signs
  std::vector<uint64_t> bits;
  const uint64_t sign = uint64_t(1) << 63;
  for (uint64_t b = 0; b < sign; b += uint64_t(stride64)) bits.push_back(sign | b);
  for (double x : {0.0, -0.0, -708.3964185322641, -708.39641853226, -708.4, -745.2, -1e308,
                   -std::numeric_limits<double>::infinity(), -1e-300, -5e-324})
    for (int d = -2; d <= 2; ++d) bits.push_back(ft_as_uint(x) + uint64_t(int64_t(d)));
  uint64_t state = 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < 4096; ++i) {  // NaN payloads (splitmix64)
    state += 0x9E3779B97F4A7C15ull;
    uint64_t z = (state ^ (state >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const uint64_t payload = (z & 0x000FFFFFFFFFFFFFull) | 1u;
    bits.push_back((z & sign) | 0x7FF0000000000000ull | payload);
  }
  bad += exp_mismatches_f64(bits.data(), int64_t(bits.size()));
  return bad;
}

}  // namespace fusedtrain::cpu

// Dense-layer kernels on the GPU: cuBLASLt GEMMs (resolved at run time, see
// cuda/cublaslt_api.h) with the bias and activation epilogue fused where
// cuBLASLt has it, else one epilogue kernel on act_math.h (the functions the
// CPU loops in cpu/dense_cpu.cpp call); the backward pass computes dz and the
// bias gradient in one kernel (fixed row tiles summed in double, then in
// tile order: deterministic), then dw and dx with two GEMMs.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cub/block/block_reduce.cuh>

#include <map>
#include <mutex>
#include <tuple>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/check.cuh"
#include "cuda/cublaslt_api.h"
#include "cuda/dense_cuda.h"
#include "fusedtrain/act_math.h"

namespace fusedtrain::cuda {

namespace {

// ---------------------------------------------------------------------------
// the library: dlopen once, the table of entry points, one handle per device
// ---------------------------------------------------------------------------
std::mutex g_lt_mutex;
lt::Api g_lt{};
bool g_lt_loaded = false;
std::string g_lt_path;
std::vector<lt::Handle> g_lt_handles;  // by device ordinal, created on first use

template <typename Fn>
bool resolve(void* lib, const char* name, Fn& out, std::string& missing) {
  out = reinterpret_cast<Fn>(dlsym(lib, name));
  if (out == nullptr) missing += std::string(missing.empty() ? "" : ", ") + name;
  return out != nullptr;
}

const char* status_text(lt::Status s) {
  const char* t = g_lt.status_string != nullptr ? g_lt.status_string(s) : nullptr;
  return t != nullptr ? t : "unknown cuBLAS status";
}

void check_lt(lt::Status s, const char* call, const char* file, int line) {
  if (s != lt::kSuccess)
    throw std::runtime_error(std::string("cuBLASLt error: ") + call + " failed with " +
                             status_text(s) + " (status " + std::to_string(s) + ") at " + file +
                             ":" + std::to_string(line));
}
#define FT_LT_CHECK(call) check_lt((call), #call, __FILE__, __LINE__)

const lt::Api& api() {
  if (!g_lt_loaded)
    throw std::runtime_error("cuBLASLt is not loaded (fusedtrain loads it at the first dense call)");
  return g_lt;
}

lt::Handle handle_for_current_device() {
  int device = 0;
  FT_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(g_lt_mutex);
  if (size_t(device) >= g_lt_handles.size()) g_lt_handles.resize(size_t(device) + 1, nullptr);
  if (g_lt_handles[size_t(device)] == nullptr) {
    lt::Handle h = nullptr;
    FT_LT_CHECK(g_lt.create(&h));
    g_lt_handles[size_t(device)] = h;
  }
  return g_lt_handles[size_t(device)];
}

// The heuristic's choice per problem (it costs more than the rest of the
// call's host work): keyed by everything the query sees. Bounded: cleared
// when it reaches kMaxCachedPlans entries.
struct AlgoKey {
  int device, dtype, ta, tb;
  int64_t m, n, k, lda, ldb, ldd;
  uint32_t epilogue, align_a, align_b, align_d;
  bool operator<(const AlgoKey& o) const {
    return std::tie(device, dtype, ta, tb, m, n, k, lda, ldb, ldd, epilogue, align_a, align_b,
                    align_d) < std::tie(o.device, o.dtype, o.ta, o.tb, o.m, o.n, o.k, o.lda,
                                        o.ldb, o.ldd, o.epilogue, o.align_a, o.align_b, o.align_d);
  }
};
struct AlgoChoice {
  bool found;
  lt::Algo algo;
};
constexpr size_t kMaxCachedPlans = 1024;
std::mutex g_algo_mutex;
std::map<AlgoKey, AlgoChoice> g_algo_cache;

// RAII owners of the per-call descriptors (destroyed on every path)
struct DescGuard {
  lt::MatmulDesc d = nullptr;
  ~DescGuard() {
    if (d != nullptr) g_lt.desc_destroy(d);
  }
};
struct LayoutGuard {
  lt::Layout l = nullptr;
  ~LayoutGuard() {
    if (l != nullptr) g_lt.layout_destroy(l);
  }
};
struct PrefGuard {
  lt::Preference p = nullptr;
  ~PrefGuard() {
    if (p != nullptr) g_lt.pref_destroy(p);
  }
};

// ---------------------------------------------------------------------------
// CUDA kernels
// ---------------------------------------------------------------------------

// Forward epilogue over y (B, out) in place (grid-stride, 64-bit indices):
// v = y + b; z = v (kSaveZ); y = act(v).
template <Act A, bool kBias, bool kSaveZ, typename T>
__global__ void __launch_bounds__(kDenseThreads)
    epilogue_kernel(T* y, T* z, const T* b, int64_t total, int64_t out, T slope) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    T v = y[i];
    if constexpr (kBias) v = v + b[i % out];
    if constexpr (kSaveZ) z[i] = v;
    y[i] = act_forward<A>(v, slope);
  }
}

// Row-wise softmax of y (B, out) in place, one block per row (grid-stride
// over rows): v = y + b, y = exp(v - max) / sum.
template <bool kBias, typename T>
__global__ void __launch_bounds__(kDenseThreads)
    softmax_kernel(T* y, const T* b, int64_t rows, int64_t out) {
  using MaxReduce = cub::BlockReduce<T, kDenseThreads>;
  using SumReduce = cub::BlockReduce<double, kDenseThreads>;
  __shared__ typename MaxReduce::TempStorage max_tmp;
  __shared__ typename SumReduce::TempStorage sum_tmp;
  __shared__ T row_max, row_inv;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    T* yr = y + r * out;
    T m = -INFINITY;
    for (int64_t c = threadIdx.x; c < out; c += kDenseThreads) {
      T v = yr[c];
      if constexpr (kBias) {
        v = v + b[c];
        yr[c] = v;
      }
      m = ft_max(m, v);
    }
    m = MaxReduce(max_tmp).Reduce(m, [](T a, T c) { return ft_max(a, c); });
    if (threadIdx.x == 0) row_max = m;
    __syncthreads();
    m = row_max;
    double s = 0.0;
    for (int64_t c = threadIdx.x; c < out; c += kDenseThreads) {
      const T e = softmax_shifted_exp(yr[c], m);
      yr[c] = e;
      s += double(e);
    }
    s = SumReduce(sum_tmp).Sum(s);
    if (threadIdx.x == 0) row_inv = T(1) / T(s);
    __syncthreads();
    const T inv = row_inv;
    for (int64_t c = threadIdx.x; c < out; c += kDenseThreads) yr[c] = yr[c] * inv;
    __syncthreads();  // row_max, row_inv and the temp storage are reused
  }
}

// dz = dy * act'(saved) over a tile of kDenseRowTile rows (blockIdx.y) and
// kDenseThreads columns (blockIdx.x; one column per thread, rows in order),
// with the tile's column sums in double to partial[tile * out + c].
// Identity (kCopy = false, dz unused) only sums dy; softmax's dz is made by
// softmax_grad_kernel first and summed here with A = Identity.
template <Act A, bool kWrite, typename T>
__global__ void __launch_bounds__(kDenseThreads)
    grad_tile_kernel(const T* dy, const T* saved, T* dz, double* partial, int64_t B, int64_t out,
                     T slope) {
  const int64_t c = int64_t(blockIdx.x) * kDenseThreads + threadIdx.x;
  if (c >= out) return;
  for (int64_t tile = blockIdx.y; tile < dense_row_tiles(B); tile += gridDim.y) {
    const int64_t r0 = tile * kDenseRowTile;
    const int64_t r1 = r0 + kDenseRowTile < B ? r0 + kDenseRowTile : B;
    double acc = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r * out + c;
      T g;
      if constexpr (A == Act::Identity) {
        g = dy[i];
      } else {
        g = act_backward<A>(dy[i], saved[i], slope);
      }
      if constexpr (kWrite) dz[i] = g;
      acc += double(g);
    }
    partial[tile * out + c] = acc;
  }
}

// softmax backward, one block per row: dz = y * (dy - sum_k dy_k y_k).
template <typename T>
__global__ void __launch_bounds__(kDenseThreads)
    softmax_grad_kernel(const T* dy, const T* y, T* dz, int64_t rows, int64_t out) {
  using SumReduce = cub::BlockReduce<double, kDenseThreads>;
  __shared__ typename SumReduce::TempStorage tmp;
  __shared__ T row_dot;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* dyr = dy + r * out;
    const T* yr = y + r * out;
    double d = 0.0;
    for (int64_t c = threadIdx.x; c < out; c += kDenseThreads) d += double(dyr[c] * yr[c]);
    d = SumReduce(tmp).Sum(d);
    if (threadIdx.x == 0) row_dot = T(d);
    __syncthreads();
    const T dot = row_dot;
    for (int64_t c = threadIdx.x; c < out; c += kDenseThreads)
      dz[r * out + c] = yr[c] * (dyr[c] - dot);
    __syncthreads();
  }
}

// db[c] = (accumulate ? db[c] : 0) + sum of the tiles' partials, in tile order.
template <typename T>
__global__ void __launch_bounds__(kDenseThreads)
    bias_grad_kernel(const double* partial, int64_t tiles, T* db, int64_t out, bool accumulate) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < out;
       c += int64_t(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (int64_t t = 0; t < tiles; ++t) s += partial[t * out + c];
    db[c] = accumulate ? T(double(db[c]) + s) : T(s);
  }
}

// ---------------------------------------------------------------------------
// kernel launchers
// ---------------------------------------------------------------------------
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
unsigned blocks_for(int64_t work, int64_t per_block) {
  const int64_t b = (work + per_block - 1) / per_block;
  return unsigned(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

// The largest power of two up to 256 that divides the address.
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t k = 256;
  while (k > 1 && a % k != 0) k /= 2;
  return k;
}

constexpr lt::Status kStatusNotSupported = 15;  // CUBLAS_STATUS_NOT_SUPPORTED

template <typename T>
cudaDataType_t data_type() {
  return std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_64F;
}

// One cuBLASLt product (column-major, see GemmPlan): D = op(A) op(B)
// (+ D when accumulate) with `epilogue` (and `bias` for the bias ones).
// Returns false, having launched nothing, when cuBLASLt has no algorithm for
// this epilogue (the caller then runs the default one and its own kernel).
template <typename T>
bool lt_gemm(const GemmPlan& p, const void* A, const void* Bm, void* D, bool accumulate,
             uint32_t epilogue, const void* bias, void* workspace, cudaStream_t st) {
  if (p.m == 0 || p.n == 0) return true;
  if (p.k == 0) {  // an empty sum: D = 0, or D unchanged when accumulating
    if (!accumulate)
      FT_CUDA_CHECK(cudaMemsetAsync(D, 0, size_t(p.m) * size_t(p.n) * sizeof(T), st));
    return epilogue == lt::kEpilogueDefault;
  }
  const lt::Api& L = api();
  const lt::Handle h = handle_for_current_device();
  const cudaDataType_t dt = data_type<T>();
  DescGuard desc;
  FT_LT_CHECK(L.desc_create(&desc.d, std::is_same_v<T, float> ? lt::kCompute32F : lt::kCompute64F,
                            dt));
  const int32_t ta = p.ta ? lt::kOpT : lt::kOpN, tb = p.tb ? lt::kOpT : lt::kOpN;
  FT_LT_CHECK(L.desc_set(desc.d, lt::kDescTransA, &ta, sizeof ta));
  FT_LT_CHECK(L.desc_set(desc.d, lt::kDescTransB, &tb, sizeof tb));
  FT_LT_CHECK(L.desc_set(desc.d, lt::kDescEpilogue, &epilogue, sizeof epilogue));
  if (bias != nullptr) FT_LT_CHECK(L.desc_set(desc.d, lt::kDescBiasPointer, &bias, sizeof bias));
  LayoutGuard la, lb, ld;
  FT_LT_CHECK(L.layout_create(&la.l, dt, uint64_t(p.ta ? p.k : p.m), uint64_t(p.ta ? p.m : p.k),
                              p.lda));
  FT_LT_CHECK(L.layout_create(&lb.l, dt, uint64_t(p.tb ? p.n : p.k), uint64_t(p.tb ? p.k : p.n),
                              p.ldb));
  FT_LT_CHECK(L.layout_create(&ld.l, dt, uint64_t(p.m), uint64_t(p.n), p.ldd));
  PrefGuard pref;
  FT_LT_CHECK(L.pref_create(&pref.p));
  const uint64_t ws = kLtWorkspaceBytes;
  FT_LT_CHECK(L.pref_set(pref.p, lt::kPrefMaxWorkspaceBytes, &ws, sizeof ws));
  // the heuristic assumes 256-byte aligned operands unless told otherwise
  // (views into a larger array are not)
  const uint32_t align_a = alignment_of(A), align_b = alignment_of(Bm), align_d = alignment_of(D);
  FT_LT_CHECK(L.pref_set(pref.p, lt::kPrefMinAlignmentA, &align_a, sizeof align_a));
  FT_LT_CHECK(L.pref_set(pref.p, lt::kPrefMinAlignmentB, &align_b, sizeof align_b));
  FT_LT_CHECK(L.pref_set(pref.p, lt::kPrefMinAlignmentC, &align_d, sizeof align_d));
  FT_LT_CHECK(L.pref_set(pref.p, lt::kPrefMinAlignmentD, &align_d, sizeof align_d));
  int device = 0;
  FT_CUDA_CHECK(cudaGetDevice(&device));
  const AlgoKey key{device, int(dt), ta, tb, p.m, p.n, p.k, p.lda, p.ldb, p.ldd, epilogue,
                    align_a, align_b, align_d};
  lt::HeuristicResult result{};
  int found = 0;
  lt::Status hs = lt::kSuccess;
  {
    std::lock_guard<std::mutex> lock(g_algo_mutex);
    const auto it = g_algo_cache.find(key);
    if (it != g_algo_cache.end()) {
      found = it->second.found ? 1 : 0;
      result.algo = it->second.algo;
    }
    if (it == g_algo_cache.end()) {
      hs = L.heuristic(h, desc.d, la.l, lb.l, ld.l, ld.l, pref.p, 1, &result, &found);
      if (hs == lt::kSuccess || hs == kStatusNotSupported) {  // a definite answer: keep it
        if (g_algo_cache.size() >= kMaxCachedPlans) g_algo_cache.clear();
        g_algo_cache[key] = AlgoChoice{hs == lt::kSuccess && found > 0, result.algo};
      }
    }
  }
  if (hs != lt::kSuccess || found == 0) {
    if (epilogue != lt::kEpilogueDefault) return false;  // the caller does the epilogue itself
    FT_LT_CHECK(hs);
    throw std::runtime_error("cuBLASLt error: cublasLtMatmulAlgoGetHeuristic found no algorithm "
                             "for a " + std::to_string(p.m) + "x" + std::to_string(p.n) + "x" +
                             std::to_string(p.k) + " product at " + __FILE__ + ":" +
                             std::to_string(__LINE__));
  }
  const T one = T(1), beta = accumulate ? T(1) : T(0);
  FT_LT_CHECK(L.matmul(h, desc.d, &one, A, la.l, Bm, lb.l, &beta, D, ld.l, D, ld.l, &result.algo,
                       workspace, kLtWorkspaceBytes, st));
  return true;
}

const void* operand(Operand o, const void* x, const void* w, const void* dz) {
  return o == Operand::X ? x : (o == Operand::W ? w : dz);
}

template <Act A, typename T>
void run_epilogue(const DenseForwardArgs& a, bool bias_done, cudaStream_t st) {
  T* y = static_cast<T*>(a.y);
  const T* b = bias_done ? nullptr : static_cast<const T*>(a.b);
  const T slope = T(a.slope);
  const int64_t total = a.B * a.out;
  if (total == 0) return;
  if constexpr (A == Act::Softmax) {
    const unsigned grid = blocks_for(a.B, 1);
    b ? softmax_kernel<true, T><<<grid, kDenseThreads, 0, st>>>(y, b, a.B, a.out)
      : softmax_kernel<false, T><<<grid, kDenseThreads, 0, st>>>(y, b, a.B, a.out);
  } else {
    constexpr bool kSave = saved_of(A) == Saved::PreActivation;
    T* z = static_cast<T*>(a.z);
    const unsigned grid = blocks_for(total, kDenseThreads);
    b ? epilogue_kernel<A, true, kSave, T><<<grid, kDenseThreads, 0, st>>>(y, z, b, total, a.out,
                                                                           slope)
      : epilogue_kernel<A, false, kSave, T><<<grid, kDenseThreads, 0, st>>>(y, z, b, total, a.out,
                                                                            slope);
  }
  FT_CUDA_CHECK(cudaGetLastError());
}

template <Act A, typename T>
void forward_typed(const DenseForwardArgs& a, cudaStream_t st) {
  const GemmPlan p = gemm_plan(DenseGemm::Forward, a.B, a.in, a.out);
  const void* A_ = operand(p.a, a.x, a.w, nullptr);
  const void* B_ = operand(p.b, a.x, a.w, nullptr);
  // cuBLASLt's own epilogues where they compute exactly what act_math.h does
  // (float32 only: its double-precision epilogue support is narrower)
  uint32_t fused = lt::kEpilogueDefault;
  // (and a 16-byte aligned bias, which the bias epilogues read as vectors)
  if (std::is_same_v<T, float> && (a.b == nullptr || alignment_of(a.b) >= 16)) {
    if (A == Act::Identity && a.b != nullptr) fused = lt::kEpilogueBias;
    if (A == Act::Relu) fused = a.b != nullptr ? lt::kEpilogueReluBias : lt::kEpilogueRelu;
  }
  const bool with_bias = fused == lt::kEpilogueBias || fused == lt::kEpilogueReluBias;
  if (fused != lt::kEpilogueDefault &&
      lt_gemm<T>(p, A_, B_, a.y, false, fused, with_bias ? a.b : nullptr, a.workspace, st))
    return;  // the whole layer in one call
  lt_gemm<T>(p, A_, B_, a.y, false, lt::kEpilogueDefault, nullptr, a.workspace, st);
  if (A != Act::Identity || a.b != nullptr) run_epilogue<A, T>(a, false, st);
}

template <Act A, typename T>
void backward_typed(const DenseBackwardArgs& a, cudaStream_t st) {
  const T* dy = static_cast<const T*>(a.dy);
  const T* saved = static_cast<const T*>(a.saved);
  T* dz = static_cast<T*>(a.dz);
  auto* partial = reinterpret_cast<double*>(static_cast<char*>(a.workspace) + kLtWorkspaceBytes);
  const int64_t tiles = dense_row_tiles(a.B);
  const T* g = A == Act::Identity ? dy : dz;
  if (a.out > 0) {
    const dim3 grid(blocks_for(a.out, kDenseThreads),
                    unsigned(tiles < 65535 ? (tiles < 1 ? 1 : tiles) : 65535));
    if constexpr (A == Act::Softmax) {
      if (a.B > 0) {
        softmax_grad_kernel<T><<<blocks_for(a.B, 1), kDenseThreads, 0, st>>>(dy, saved, dz, a.B,
                                                                           a.out);
        FT_CUDA_CHECK(cudaGetLastError());
      }
      grad_tile_kernel<Act::Identity, false, T>
          <<<grid, kDenseThreads, 0, st>>>(dz, nullptr, nullptr, partial, a.B, a.out, T(a.slope));
    } else if constexpr (A == Act::Identity) {
      grad_tile_kernel<Act::Identity, false, T>
          <<<grid, kDenseThreads, 0, st>>>(dy, nullptr, nullptr, partial, a.B, a.out, T(a.slope));
    } else {
      grad_tile_kernel<A, true, T>
          <<<grid, kDenseThreads, 0, st>>>(dy, saved, dz, partial, a.B, a.out, T(a.slope));
    }
    FT_CUDA_CHECK(cudaGetLastError());
    bias_grad_kernel<T><<<blocks_for(a.out, kDenseThreads), kDenseThreads, 0, st>>>(
        partial, tiles, static_cast<T*>(a.db), a.out, a.accumulate);
    FT_CUDA_CHECK(cudaGetLastError());
  }
  const GemmPlan pw = gemm_plan(DenseGemm::Dw, a.B, a.in, a.out);
  lt_gemm<T>(pw, operand(pw.a, a.x, a.w, g), operand(pw.b, a.x, a.w, g), a.dw, a.accumulate,
             lt::kEpilogueDefault, nullptr, a.workspace, st);
  if (a.dx != nullptr) {
    const GemmPlan px = gemm_plan(DenseGemm::Dx, a.B, a.in, a.out);
    lt_gemm<T>(px, operand(px.a, a.x, a.w, g), operand(px.b, a.x, a.w, g), a.dx, false,
               lt::kEpilogueDefault, nullptr, a.workspace, st);
  }
}

// fn(std::integral_constant<Act, A>) for the runtime activation
template <class Fn>
void with_act(Act act, Fn&& fn) {
  switch (act) {
    case Act::Identity: return fn(std::integral_constant<Act, Act::Identity>());
    case Act::Relu: return fn(std::integral_constant<Act, Act::Relu>());
    case Act::LeakyRelu: return fn(std::integral_constant<Act, Act::LeakyRelu>());
    case Act::Sigmoid: return fn(std::integral_constant<Act, Act::Sigmoid>());
    case Act::Tanh: return fn(std::integral_constant<Act, Act::Tanh>());
    case Act::GeluErf: return fn(std::integral_constant<Act, Act::GeluErf>());
    case Act::GeluTanh: return fn(std::integral_constant<Act, Act::GeluTanh>());
    case Act::Softmax: return fn(std::integral_constant<Act, Act::Softmax>());
  }
  throw std::invalid_argument("activation: unknown activation code " + std::to_string(int(act)));
}

}  // namespace

// ---------------------------------------------------------------------------
// entry points
// ---------------------------------------------------------------------------
std::string load_cublaslt(const std::vector<std::string>& candidates) {
  std::lock_guard<std::mutex> lock(g_lt_mutex);
  if (g_lt_loaded) return std::string();
  std::string reasons;
  for (const std::string& path : candidates) {
    const std::string name = path.empty() ? std::string("libcublasLt.so.13") : path;
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* e = dlerror();
      reasons += (reasons.empty() ? "" : "; ") + (e != nullptr ? std::string(e) : name);
      continue;
    }
    lt::Api t{};
    std::string missing;
    bool ok = resolve(lib, "cublasLtCreate", t.create, missing);
    ok &= resolve(lib, "cublasLtDestroy", t.destroy, missing);
    ok &= resolve(lib, "cublasLtMatmulDescCreate", t.desc_create, missing);
    ok &= resolve(lib, "cublasLtMatmulDescDestroy", t.desc_destroy, missing);
    ok &= resolve(lib, "cublasLtMatmulDescSetAttribute", t.desc_set, missing);
    ok &= resolve(lib, "cublasLtMatrixLayoutCreate", t.layout_create, missing);
    ok &= resolve(lib, "cublasLtMatrixLayoutDestroy", t.layout_destroy, missing);
    ok &= resolve(lib, "cublasLtMatmulPreferenceCreate", t.pref_create, missing);
    ok &= resolve(lib, "cublasLtMatmulPreferenceDestroy", t.pref_destroy, missing);
    ok &= resolve(lib, "cublasLtMatmulPreferenceSetAttribute", t.pref_set, missing);
    ok &= resolve(lib, "cublasLtMatmulAlgoGetHeuristic", t.heuristic, missing);
    ok &= resolve(lib, "cublasLtMatmul", t.matmul, missing);
    std::string optional;
    resolve(lib, "cublasLtGetStatusString", t.status_string, optional);  // may be absent
    if (!ok) {
      reasons += (reasons.empty() ? "" : "; ") + name + " lacks " + missing;
      dlclose(lib);
      continue;
    }
    g_lt = t;  // the library stays loaded for the life of the process
    g_lt_loaded = true;
    g_lt_path = name;
    return std::string();
  }
  return reasons.empty() ? std::string("no candidate paths") : reasons;
}

bool cublaslt_loaded() {
  std::lock_guard<std::mutex> lock(g_lt_mutex);
  return g_lt_loaded;
}

std::string cublaslt_path() {
  std::lock_guard<std::mutex> lock(g_lt_mutex);
  return g_lt_path;
}

GemmPlan gemm_plan(DenseGemm which, int64_t B, int64_t in, int64_t out) {
  auto ld = [](int64_t v) { return v > 1 ? v : int64_t(1); };
  switch (which) {
    case DenseGemm::Forward:  // y^T (out, B) = w^T (out, in) x^T (in, B)
      return {Operand::W, Operand::X, false, false, out, B, in, ld(out), ld(in), ld(out)};
    case DenseGemm::Dw:  // dw^T (out, in) = dz^T (out, B) x (B, in)
      return {Operand::Dz, Operand::X, false, true, out, in, B, ld(out), ld(in), ld(out)};
    case DenseGemm::Dx:  // dx^T (in, B) = w (in, out) dz^T (out, B)
      return {Operand::W, Operand::Dz, true, false, in, B, out, ld(out), ld(out), ld(in)};
  }
  throw std::invalid_argument("gemm_plan: unknown product");
}

void dense_forward(const DenseForwardArgs& a, DType dt, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  with_act(a.act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    dt == DType::F32 ? forward_typed<A, float>(a, st) : forward_typed<A, double>(a, st);
  });
}

void dense_backward(const DenseBackwardArgs& a, DType dt, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  with_act(a.act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    dt == DType::F32 ? backward_typed<A, float>(a, st) : backward_typed<A, double>(a, st);
  });
}

}  // namespace fusedtrain::cuda

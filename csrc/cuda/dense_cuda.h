// CUDA entry points of the dense-layer kernels (the _cuda_blas module): the
// GEMMs from cuBLASLt, loaded at run time (cuda/cublaslt_api.h says why),
// the bias / activation epilogue fused into the GEMM where cuBLASLt has it
// (float32: bias, relu, relu + bias), otherwise one epilogue kernel on the
// shared act_math.h. Plain C++ declarations for the host-compiled binding.
//
// Arrays are row-major; cuBLASLt is column-major, so each product is
// computed transposed: a row-major (r, c) matrix is the column-major (c, r)
// matrix with ld = c, and Y = X W is Y^T = W^T X^T. gemm_plan() says which
// operand goes where (host code, tested without a GPU).
//
// Nothing is allocated: cuBLASLt's scratch and the bias-gradient partial
// sums come from the caller's workspace (dense_workspace_bytes). Nothing is
// synchronised. Errors raise std::runtime_error naming the call, the error
// and file:line.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/optim_cuda.h"  // DType
#include "fusedtrain/act_math.h"

namespace fusedtrain::cuda {

// ---------------------------------------------------------------------------
// the library
// ---------------------------------------------------------------------------
// Loads libcublasLt from the first path of `candidates` that opens (an
// empty string: the dynamic loader's own search for libcublasLt.so.13) and
// resolves the entry points. Returns "" on success, else what each candidate
// said. Loading again after a success does nothing.
std::string load_cublaslt(const std::vector<std::string>& candidates);
bool cublaslt_loaded();
std::string cublaslt_path();  // the file that was loaded ("" when none)

// ---------------------------------------------------------------------------
// the GEMMs of a dense layer as column-major products
// ---------------------------------------------------------------------------
// D (m, n, ld ldd) = op(A) (m, k) op(B) (k, n) (+ D when accumulating), all
// column-major; A is stored (ta ? k : m) x (ta ? m : k) with ld lda, B is
// stored (tb ? n : k) x (tb ? k : n) with ld ldb. `a` and `b` name the
// row-major arrays passed as A and B.
enum class Operand { X, W, Dz };
struct GemmPlan {
  Operand a, b;
  bool ta, tb;
  int64_t m, n, k, lda, ldb, ldd;
};
enum class DenseGemm { Forward /* y = x w */, Dw /* dw = x^T dz */, Dx /* dx = dz w^T */ };
// x is (B, in), w is (in, out), y / dz are (B, out), dw is (in, out), dx is (B, in)
GemmPlan gemm_plan(DenseGemm which, int64_t B, int64_t in, int64_t out);

// ---------------------------------------------------------------------------
// workspace
// ---------------------------------------------------------------------------
constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;  // cuBLASLt's scratch (32 MiB, as for Hopper)
constexpr int64_t kDenseRowTile = 64;  // rows per bias-gradient partial sum
constexpr int kDenseThreads = 256;
FT_HD int64_t dense_row_tiles(int64_t B) { return (B + kDenseRowTile - 1) / kDenseRowTile; }
// Bytes: cuBLASLt's scratch, then (backward) one double per row tile and column.
inline size_t dense_workspace_bytes(int64_t B, int64_t out, bool backward) {
  return kLtWorkspaceBytes + (backward ? size_t(dense_row_tiles(B) * out) * 8 : 0);
}

struct DenseForwardArgs {
  // x is (B, in), w is (in, out), b is (out,) or null, y is (B, out), z is
  // (B, out) (pre-activation, gelu only) or null
  const void* x = nullptr;
  const void* w = nullptr;
  const void* b = nullptr;
  void* y = nullptr;
  void* z = nullptr;
  int64_t B = 0, in = 0, out = 0;
  Act act = Act::Identity;
  double slope = 0.0;
  void* workspace = nullptr;  // dense_workspace_bytes(B, out, false)
};
void dense_forward(const DenseForwardArgs& a, DType dt, void* stream);

struct DenseBackwardArgs {
  // dy is (B, out), x (B, in), w (in, out), saved (B, out) or null
  // (identity), dz (B, out) scratch (not identity), dx (B, in) or null, dw
  // (in, out), db (out,); accumulate adds dw and db to what they hold
  const void* dy = nullptr;
  const void* x = nullptr;
  const void* w = nullptr;
  const void* saved = nullptr;
  void* dz = nullptr;
  void* dx = nullptr;
  void* dw = nullptr;
  void* db = nullptr;
  int64_t B = 0, in = 0, out = 0;
  Act act = Act::Identity;
  double slope = 0.0;
  bool accumulate = false;
  void* workspace = nullptr;  // dense_workspace_bytes(B, out, true)
};
void dense_backward(const DenseBackwardArgs& a, DType dt, void* stream);

}  // namespace fusedtrain::cuda

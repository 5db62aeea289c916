// The few cuBLASLt entry points the dense kernels use, declared here and
// resolved at run time (dlopen + dlsym) instead of included from cublasLt.h
// and linked.
//
// Why: cuBLAS is not part of the CUDA toolkit installed where fusedtrain is
// built and tested (nvcc and cudart only; cublasLt.h and libcublasLt are
// absent), and it must never be a build requirement -- it comes at run time
// from the optional `nvidia-cublas` wheel (pip install "fusedtrain[cuda]",
// 444 MB) or a system CUDA installation. Declaring the stable C ABI subset
// we call keeps every module compiling everywhere, lets _cuda (optimizers,
// losses, dropout) work without cuBLAS at all, and turns a missing library
// into a clear Python error at the first dense call on the GPU instead of an
// ImportError. The loader (cuda/cublaslt.h) takes the wheel's library path
// from Python, so no rpath into site-packages is needed either.
//
// The values below are those of the public cuBLASLt API (cublasLt.h,
// cublas_api.h; unchanged since CUDA 11.x); only the types we pass by value
// or allocate (heuristic results, the algo) need their exact layout.
#pragma once

#include <cuda_runtime.h>
#include <library_types.h>  // cudaDataType_t: CUDA_R_32F = 0, CUDA_R_64F = 1 (ships with cudart)

#include <cstddef>
#include <cstdint>

namespace fusedtrain::cuda::lt {

using Status = int;  // cublasStatus_t
constexpr Status kSuccess = 0;

using Handle = struct Context*;          // cublasLtHandle_t
using MatmulDesc = struct MatmulDescOpaque*;  // cublasLtMatmulDesc_t
using Layout = struct LayoutOpaque*;     // cublasLtMatrixLayout_t
using Preference = struct PreferenceOpaque*;  // cublasLtMatmulPreference_t

struct Algo {  // cublasLtMatmulAlgo_t
  uint64_t data[8];
};
struct HeuristicResult {  // cublasLtMatmulHeuristicResult_t
  Algo algo;
  size_t workspace_size;
  Status state;
  float waves_count;
  int reserved[4];
};

// cublasComputeType_t
enum ComputeType : int { kCompute32F = 68, kCompute64F = 70 };
// cublasOperation_t
enum Operation : int { kOpN = 0, kOpT = 1 };
// cublasLtMatmulDescAttributes_t
enum DescAttr : int {
  kDescTransA = 3,
  kDescTransB = 4,
  kDescEpilogue = 7,
  kDescBiasPointer = 8,
};
// cublasLtEpilogue_t (uint32 values)
enum Epilogue : uint32_t {
  kEpilogueDefault = 1,
  kEpilogueRelu = 2,
  kEpilogueBias = 4,
  kEpilogueReluBias = 6,
};
// cublasLtMatmulPreferenceAttributes_t
enum PrefAttr : int {
  kPrefMaxWorkspaceBytes = 1,  // uint64_t
  kPrefMinAlignmentA = 5,      // uint32_t bytes, default 256 (each of A, B, C, D)
  kPrefMinAlignmentB = 6,
  kPrefMinAlignmentC = 7,
  kPrefMinAlignmentD = 8,
};

// Function pointer types, named after the entry points.
using CreateFn = Status (*)(Handle*);
using DestroyFn = Status (*)(Handle);
using MatmulDescCreateFn = Status (*)(MatmulDesc*, int /*compute*/, cudaDataType_t /*scale*/);
using MatmulDescDestroyFn = Status (*)(MatmulDesc);
using MatmulDescSetAttributeFn = Status (*)(MatmulDesc, int, const void*, size_t);
using MatrixLayoutCreateFn = Status (*)(Layout*, cudaDataType_t, uint64_t rows, uint64_t cols,
                                        int64_t ld);
using MatrixLayoutDestroyFn = Status (*)(Layout);
using PreferenceCreateFn = Status (*)(Preference*);
using PreferenceDestroyFn = Status (*)(Preference);
using PreferenceSetAttributeFn = Status (*)(Preference, int, const void*, size_t);
using AlgoGetHeuristicFn = Status (*)(Handle, MatmulDesc, Layout, Layout, Layout, Layout,
                                      Preference, int requested, HeuristicResult* results,
                                      int* returned);
using MatmulFn = Status (*)(Handle, MatmulDesc, const void* alpha, const void* A, Layout,
                            const void* B, Layout, const void* beta, const void* C, Layout,
                            void* D, Layout, const Algo*, void* workspace, size_t workspace_size,
                            cudaStream_t);
using GetStatusStringFn = const char* (*)(Status);

// The resolved table (all non-null once loaded).
struct Api {
  CreateFn create;
  DestroyFn destroy;
  MatmulDescCreateFn desc_create;
  MatmulDescDestroyFn desc_destroy;
  MatmulDescSetAttributeFn desc_set;
  MatrixLayoutCreateFn layout_create;
  MatrixLayoutDestroyFn layout_destroy;
  PreferenceCreateFn pref_create;
  PreferenceDestroyFn pref_destroy;
  PreferenceSetAttributeFn pref_set;
  AlgoGetHeuristicFn heuristic;
  MatmulFn matmul;
  GetStatusStringFn status_string;
};

}  // namespace fusedtrain::cuda::lt

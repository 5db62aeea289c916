// The BLAS the dense kernels call: OpenBLAS from the scipy-openblas32 wheel,
// whose symbols carry the scipy_ prefix. Row-major throughout.
#pragma once

#include <cblas.h>

#include <cstdint>

namespace fusedtrain::cpu {

// C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C; leading
// dimensions are the row strides of A, B, C as stored.
inline void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                 int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, blasint(M), blasint(N), blasint(K),
                    alpha, A, blasint(lda), B, blasint(ldb), beta, C, blasint(ldc));
}

inline void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                 const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                 double* C, int64_t ldc) {
  scipy_cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, blasint(M), blasint(N), blasint(K),
                    alpha, A, blasint(lda), B, blasint(ldb), beta, C, blasint(ldc));
}

// OpenBLAS runs single-threaded: the dense kernels parallelise over fixed
// tiles with their own OpenMP threads and call a serial GEMM per tile. One
// thread pool, not two: OpenBLAS's worker threads spin after each call (and
// whenever its thread count is raised again), taking the cores from the
// OpenMP loops that follow -- an order of magnitude slower on a 2-core
// machine. The scipy-openblas32 library is this package's own (NumPy and
// SciPy wheels load their own copies), so nothing else is affected.
// Called once when _core is imported.
inline void use_serial_blas() { scipy_openblas_set_num_threads(1); }

}  // namespace fusedtrain::cpu

// CPU entry points of the batch- and layer-normalization kernels. Arrays are
// validated by the binding (bind/normalize_bind.cpp); these only run the loops.
//
// x is (B, C), row-major. Batch norm normalises each column over the B rows,
// layer norm each row over its C elements. Every statistic is accumulated in
// double, in two passes (mean, then centred sum of squares). Column
// reductions are cut into fixed blocks of rows (a function of (B, C) only,
// never of the thread count); each block's partial sums go to a scratch row
// and the rows are added in block order, so results are bitwise the same for
// any number of threads. The scratch is a thread_local buffer of the calling
// thread (2 x blocks x C doubles at most, blocks <= 64), grown when a larger
// shape arrives and kept: nothing is allocated per call after that.
#pragma once

#include <cstdint>

#include "fusedtrain/act_math.h"
#include "fusedtrain/normalize_math.h"

namespace fusedtrain::cpu {

// Training: batch statistics -> mean, rstd (C,); running_mean / running_var
// (C,) updated in place when not null. Eval: mean = running_mean, rstd from
// running_var. y (B, C) = act((x - mean) * weight * rstd + bias); z (B, C)
// receives the pre-activation when act saves it (gelu), else null. weight,
// bias may be null (no affine). mean and rstd are kept in double for any T
// (so the backward recentres x as exactly as the forward did). Passes over x: 3 in training (mean, centred
// squares, output), 1 in eval; y (and z) written once.
template <typename T>
void batch_norm_forward(const T* x, const T* weight, const T* bias, T* running_mean,
                        T* running_var, T* y, T* z, double* mean, double* rstd, int64_t B,
                        int64_t C, bool training, double momentum, double eps, Act act, T slope);

// Training-mode gradients: s is the activation's saved value (y or z, null
// for identity); dx (B, C); dweight, dbias (C,) or null (no affine), added to
// when accumulate. Passes: 2 over dy, x and s (column sums, then dx); dx
// written once.
template <typename T>
void batch_norm_backward(const T* dy, const T* x, const double* mean, const double* rstd,
                         const T* s, const T* weight, T* dx, T* dweight, T* dbias, int64_t B,
                         int64_t C, Act act, T slope, bool accumulate);

// mean, rstd (B,) per row; y (B, C). One pass over memory (each row is read
// three times while it is in cache), y written once.
template <typename T>
void layer_norm_forward(const T* x, const T* weight, const T* bias, T* y, double* mean,
                        double* rstd, int64_t B, int64_t C, double eps);

// dx (B, C); dweight, dbias (C,) or null. One pass over dy and x (each row
// read twice while in cache), dx written once.
template <typename T>
void layer_norm_backward(const T* dy, const T* x, const double* mean, const double* rstd,
                         const T* weight, T* dx, T* dweight, T* dbias, int64_t B, int64_t C,
                         bool accumulate);

}  // namespace fusedtrain::cpu

// CPU entry points of gradient clipping: the global norm of a list of arrays
// and the in-place scale and clamp. Arrays are validated by the binding
// (bind/norm_bind.cpp); these only run the loops over a one-slot TensorList.
#pragma once

#include <cstdint>

#include "cpu/optim_cpu.h"
#include "cpu/parallel.h"
#include "fusedtrain/norm_math.h"

namespace fusedtrain::cpu {

// The p-norm of all elements of all arrays of tl, accumulated in double in
// the fixed order of fusedtrain/norm_math.h: the same bits for any thread
// count. 0 for a list with no elements.
double global_norm(const TensorList& tl, DType dt, double p);

// x = x * coef for every element (coef rounded to the arrays' dtype once).
void scale(const TensorList& tl, DType dt, double coef);

// x = clamp(x, lo, hi) for every element; NaN stays NaN.
void clamp(const TensorList& tl, DType dt, double lo, double hi);

}  // namespace fusedtrain::cpu

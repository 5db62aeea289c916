// Benchmark-only kernels, not part of the product: the memory ceilings the
// optimizer steps are measured against (bench/). Same traffic as a step,
// trivial math. Arrays are validated by the binding (bind/bench_bind.cpp).
#pragma once

#include "cpu/parallel.h"
#include "fusedtrain/multi_tensor.h"

namespace fusedtrain::cpu {

// Reads every buffer of the list and writes the first n_rw of them back
// (slots 0 .. n_rw - 1 read and written, slot n_rw read only), dtype `dt`
// (float32 or float64).
void null_step(const TensorList& tl, DType dt, int n_rw);

// The memory ceiling of a mixed-precision step: slot 0 (bfloat16 params) is
// written only, slot 1 (bfloat16 grads) read only, slots 2.. (float32 master
// and states, n_rw of them) read and written (the traffic of bfloat16 +
// float32-master Adam for n_rw = 3).
void null_mixed_step(const TensorList& tl, int n_rw);

}  // namespace fusedtrain::cpu

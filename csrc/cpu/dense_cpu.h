// Dense layer y = act(x @ w + b) and its backward pass on the CPU: the GEMMs
// come from OpenBLAS, everything around them is fused into single passes.
#pragma once

#include <cstdint>

#include "fusedtrain/act_math.h"

namespace fusedtrain::cpu {

// x is (B, in), w is (in, out), b is (out,) or null, y is (B, out);
// z is (B, out) and receives the pre-activation when saved_of(act) is
// PreActivation, else null. The bias and activation are applied to each block
// of rows right after that block's GEMM, while it is still in cache.
template <typename T>
void dense_forward(const T* x, const T* w, const T* b, T* y, T* z, int64_t B, int64_t in,
                   int64_t out, Act act, T slope);

// dy is (B, out); x (B, in); w (in, out); saved (B, out): y or z as the
// forward saved it (null for identity); dz (B, out) scratch for dy * act'
// (null for identity, where dz is dy). Outputs: dx (B, in) or null to skip,
// dw (in, out), db (out,) or null. accumulate adds into dw and db.
template <typename T>
void dense_backward(const T* dy, const T* x, const T* w, const T* saved, T* dz, T* dx, T* dw,
                    T* db, int64_t B, int64_t in, int64_t out, Act act, T slope, bool accumulate);

}  // namespace fusedtrain::cpu

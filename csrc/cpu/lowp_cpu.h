// Rounding float32 arrays to float16 / bfloat16 storage on the CPU, bit for
// bit what lowp.h's float_to_half / float_to_bf16 give (and so what the CUDA
// kernels and ml_dtypes give), at the speed of the hardware's conversion
// instructions where the CPU has them.
//
// The conversion instructions (AVX512-BF16's vcvtne2ps2bf16, F16C's
// vcvtps2ph) round to nearest even like lowp.h, but differ from it on a few
// inputs: NaN payloads (they keep the payload and set the quiet bit; lowp.h
// gives the canonical NaN for bfloat16), float32 subnormals (flushed to zero
// by vcvtne2ps2bf16) and, under MXCSR's flush-to-zero, float16 subnormal
// results. A block of 16 or 32 elements that holds any of these is converted
// by lowp.h instead; every other block by the instruction. The selection is
// per block, so the result never depends on where a block starts.
#pragma once

#include <cstdint>

#include "fusedtrain/lowp.h"

namespace fusedtrain::cpu {

// out[i] = x[i] rounded to nearest even, i < n
void narrow_nearest(BFloat16* out, const float* x, int64_t n);
void narrow_nearest(Half* out, const float* x, int64_t n);

// out[i] = x[i] widened exactly (half_to_float), i < n: F16C's vcvtph2ps,
// blocks holding a NaN (quietened there, payload kept here) or a subnormal
// through lowp.h
void widen_exact(float* out, const Half* x, int64_t n);

// Which code narrow_nearest runs on this CPU, per type: "avx512bf16",
// "avx512f", "f16c" or "portable" (lowp.h in a vectorised loop).
const char* narrow_path_bf16();
const char* narrow_path_half();
const char* widen_path_half();

// Checks narrow_nearest against lowp.h on the 2^32 float32 bit patterns
// (stride 1) or on every stride-th one; returns the number that differ.
int64_t narrow_selfcheck(bool bf16, int64_t stride);

// Checks widen_exact against lowp.h on the 65,536 float16 bit patterns.
int64_t widen_selfcheck();

}  // namespace fusedtrain::cpu

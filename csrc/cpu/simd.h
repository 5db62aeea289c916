// Runtime SIMD dispatch: a loop marked FT_CLONES is compiled for AVX-512,
// AVX2 and baseline x86-64, and the best version for the running CPU is
// picked when the module loads (GCC function multiversioning).
#pragma once

// FT_CLONES_FMA asks for AVX2 + FMA (x86-64-v3) in the middle version: for
// loops whose math uses explicit fused multiply-adds (the polynomial exp/log
// of loss_math.h), which the baseline version can only get from libm.
// FT_CLONES_BW adds an AVX-512 BW/DQ/VL version (x86-64-v4) first: for loops
// over bytes (dropout's mask), which AVX-512F alone runs 256 bits wide.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define FT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define FT_CLONES_FMA __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#define FT_CLONES_BW \
  __attribute__((target_clones("arch=x86-64-v4", "avx512f", "arch=x86-64-v3", "default")))
#else
#define FT_CLONES
#define FT_CLONES_FMA
#define FT_CLONES_BW
#endif

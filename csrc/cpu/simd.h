// Runtime SIMD dispatch: a loop marked FT_CLONES is compiled for AVX-512,
// AVX2 and baseline x86-64, and the best version for the running CPU is
// picked when the module loads (GCC function multiversioning).
#pragma once

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define FT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FT_CLONES
#endif

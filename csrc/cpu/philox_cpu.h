// The dropout stream's Philox words (philox.h) for a run of blocks on the
// CPU: AVX-512 over 16 blocks at a time where the CPU has it, the portable
// loop otherwise. The words are philox.h's exactly, so the CPU's dropout
// masks and stochastic rounding stay bit for bit the GPU's.
#pragma once

#include <cstdint>

namespace fusedtrain::cpu {

// words[4 * jj + k] = word k of Philox4x32-10 block j0 + jj under key seed,
// counter offset (philox.h's dropout_block), for jj < nb
void philox_words(uint32_t* words, uint64_t j0, int64_t nb, uint64_t seed, uint64_t offset);

// "avx512f" or "portable": the path philox_words takes on this CPU
const char* philox_path();

// Compares every path this CPU can run with philox.h on runs of blocks at
// several starts (across the 2^32 carry of the block index too), seeds and
// offsets; returns the number of words that differ.
int64_t philox_selfcheck();

}  // namespace fusedtrain::cpu

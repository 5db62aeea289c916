// Gathering rows (the training loop's shuffled batches) on the CPU threads.
#pragma once

#include <cstdint>

namespace fusedtrain::cpu {

// out row i = src row idx[i], i < n; rows of row_bytes bytes. The indices
// are checked by the caller.
void take_rows(const void* src, int64_t row_bytes, const int64_t* idx, int64_t n, void* out);

}  // namespace fusedtrain::cpu

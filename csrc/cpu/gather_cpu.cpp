// Row gather: one memcpy per row, rows shared by the threads once the batch
// is large enough to pay for waking them.
#include "cpu/gather_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "cpu/parallel.h"

namespace fusedtrain::cpu {

namespace {
// bytes per thread below which one thread copies everything (about 5 us)
constexpr int64_t kMinParallelBytes = int64_t(1) << 17;
}  // namespace

void take_rows(const void* src, int64_t row_bytes, const int64_t* idx, int64_t n, void* out) {
  const char* s = static_cast<const char*>(src);
  char* o = static_cast<char*>(out);
  const int nt = int(std::min<int64_t>(num_threads(),
                                       std::max<int64_t>(1, n * row_bytes / kMinParallelBytes)));
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(o + i * row_bytes, s + idx[i] * row_bytes, size_t(row_bytes));
}

}  // namespace fusedtrain::cpu

#include <omp.h>

#include <atomic>

#include "cpu/parallel.h"

namespace fusedtrain::cpu {

namespace {
std::atomic<int> g_threads{0};  // 0: not set, use OpenMP's default
std::atomic<bool> g_flush{false};
}  // namespace

bool flush_denormal() { return g_flush.load(std::memory_order_relaxed); }
void set_flush_denormal(bool on) { g_flush.store(on, std::memory_order_relaxed); }

int num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
}

void set_num_threads(int n) { g_threads.store(n, std::memory_order_relaxed); }

}  // namespace fusedtrain::cpu

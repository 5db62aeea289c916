// Pieces shared by the CPU (_core) and CUDA (_cuda) bindings of the
// multi-tensor kernels: the description of one list argument, its items'
// names in messages, and the no-shared-memory check over every buffer.
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace fusedtrain {
// hidden like pybind11's own types, which these structs hold
namespace bind __attribute__((visibility("hidden"))) {

namespace py = pybind11;

// One buffer list of a call: its argument name, the Python list (or None when
// the buffer is not used by this variant), and whether the kernel writes it.
struct SlotArg {
  const char* name;
  py::handle list;
  bool writable;
};

inline std::string item_name(const SlotArg& s, int64_t i) {
  return std::string(s.name) + "[" + std::to_string(i) + "]";
}

// The bytes [begin, end) of buffer `index` of slot `slot`.
struct Interval {
  uintptr_t begin, end;
  int slot;
  int64_t index;
};

// No two buffers may share memory: a parameter aliasing its gradient or a
// state would be read after it was written within the same element update.
// Sorts `iv` by start; one sweep, carrying the furthest end seen, finds any
// overlap. Raises ValueError naming the two buffers.
inline void require_disjoint(std::vector<Interval>& iv, const std::vector<SlotArg>& slots) {
  std::sort(iv.begin(), iv.end(), [](const Interval& a, const Interval& b) { return a.begin < b.begin; });
  for (size_t j = 1; j < iv.size(); ++j) {
    const Interval& prev = iv[j - 1];
    const Interval& cur = iv[j];
    if (cur.begin < prev.end)
      throw py::value_error(item_name(slots[prev.slot], prev.index) + " and " +
                            item_name(slots[cur.slot], cur.index) +
                            ": expected separate arrays, received arrays that share memory");
    if (prev.end > cur.end) iv[j] = {cur.begin, prev.end, prev.slot, prev.index};
  }
}

}  // namespace bind
}  // namespace fusedtrain

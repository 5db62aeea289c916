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

// The number of arrays of the call: every slot must be a list or tuple of the
// same non-zero length as the first (the params).
inline py::ssize_t common_length(const std::vector<SlotArg>& slots) {
  py::ssize_t n = -1;
  for (const SlotArg& s : slots) {
    PyObject* o = s.list.ptr();
    if (!PyList_Check(o) && !PyTuple_Check(o))
      throw py::type_error(std::string(s.name) + ": expected a list or tuple of arrays, received " +
                           Py_TYPE(o)->tp_name);
    const py::ssize_t len = PySequence_Fast_GET_SIZE(o);
    if (n < 0 && len == 0)
      throw py::value_error(std::string(s.name) +
                            ": expected a non-empty list of arrays, received an empty list");
    if (n >= 0 && len != n)
      throw py::value_error(std::string(s.name) + ": expected " + std::to_string(n) +
                            " arrays (one per parameter), received " + std::to_string(len));
    if (n < 0) n = len;
  }
  return n;
}

// The buffer lists of each optimizer, in the kernels' slot order (optional
// states only when their variant is on); shared by the CPU and CUDA bindings.
inline std::vector<SlotArg> adam_slots(py::handle params, py::handle grads, py::handle exp_avg,
                                       py::handle exp_avg_sq, py::handle max_exp_avg_sq,
                                       bool amsgrad) {
  std::vector<SlotArg> s = {{"params", params, true},
                            {"grads", grads, false},
                            {"exp_avg", exp_avg, true},
                            {"exp_avg_sq", exp_avg_sq, true}};
  if (amsgrad) s.push_back({"max_exp_avg_sq", max_exp_avg_sq, true});
  return s;
}

inline std::vector<SlotArg> sgd_slots(py::handle params, py::handle grads,
                                      py::handle momentum_buffer, double momentum) {
  std::vector<SlotArg> s = {{"params", params, true}, {"grads", grads, false}};
  if (momentum != 0.0) s.push_back({"momentum_buffer", momentum_buffer, true});
  return s;
}

inline std::vector<SlotArg> rmsprop_slots(py::handle params, py::handle grads,
                                          py::handle square_avg, py::handle grad_avg,
                                          py::handle momentum_buffer, bool centered,
                                          double momentum) {
  std::vector<SlotArg> s = {{"params", params, true},
                            {"grads", grads, false},
                            {"square_avg", square_avg, true}};
  if (centered) s.push_back({"grad_avg", grad_avg, true});
  if (momentum > 0.0) s.push_back({"momentum_buffer", momentum_buffer, true});
  return s;
}

inline std::vector<SlotArg> adagrad_slots(py::handle params, py::handle grads,
                                          py::handle state_sum) {
  return {{"params", params, true}, {"grads", grads, false}, {"state_sum", state_sum, true}};
}

// The benchmarks' null step: 1 to 4 written lists, then one read-only list.
inline std::vector<SlotArg> null_step_slots(py::handle written, py::handle read) {
  const py::ssize_t nw = py::len(written);
  if (nw < 1 || nw > 4)
    throw py::value_error("written: expected 1 to 4 lists of arrays, received " +
                          std::to_string(nw));
  static const char* names[] = {"written[0]", "written[1]", "written[2]", "written[3]"};
  std::vector<SlotArg> slots;
  for (py::ssize_t k = 0; k < nw; ++k) slots.push_back({names[k], written[py::int_(k)], true});
  slots.push_back({"read", read, false});
  return slots;
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

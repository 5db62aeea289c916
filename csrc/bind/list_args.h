// Pieces shared by the CPU (_core) and CUDA (_cuda) bindings of the
// multi-tensor kernels: the description of one list argument, its items'
// names in messages, the no-shared-memory check over every buffer, and the
// check of a whole call's lists, written once over a reader of the
// backend's arrays (NumPy: bind/tensor_list.cpp; GPU: bind/cuda_tensor_list.cpp).
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include <utility>
#include <vector>

#include "bind/names.h"
#include "fusedtrain/multi_tensor.h"

namespace fusedtrain {
// hidden like pybind11's own types, which these structs hold
namespace bind __attribute__((visibility("hidden"))) {

namespace py = pybind11;

// Which dtype a buffer list must have: the params' (params, grads), the
// optimizer states' (float32 or bfloat16 beside float16 / bfloat16 params,
// else the params'), or float32 (master weights).
enum class Role { Param, State, Master };

// One buffer list of a call: its argument name, the Python list (or None when
// the buffer is not used by this variant), whether the kernel writes it, and
// its role.
struct SlotArg {
  const char* name;
  py::handle list;
  bool writable;
  Role role = Role::Param;
};

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
  }
  return "?";
}

inline bool is_narrow(DType d) { return d == DType::F16 || d == DType::BF16; }

// The checked lists of a kernel with no float16 / bfloat16 variant (clipping,
// the null step): their dtype must be float32 or float64. `name` is the
// first slot's.
template <class Checked>
Checked plain_only(Checked c, std::string_view name) {
  if (is_narrow(c.dtype))
    throw py::type_error(name + "[0]: expected dtype float32 or float64, received " +
                         dtype_name(c.dtype));
  return c;
}

inline const SlotArg* find_role(const std::vector<SlotArg>& slots, Role role) {
  for (const SlotArg& s : slots)
    if (s.role == role) return &s;
  return nullptr;
}

// float16 / bfloat16 params need float32 master weights; float32 / float64
// params take none. Raises ValueError naming master_params.
inline void check_master(DType param, bool has_master) {
  if (is_narrow(param) && !has_master)
    throw py::value_error(std::string("master_params: expected a list of float32 arrays (") +
                          dtype_name(param) +
                          " params are stepped through float32 master weights), received None");
  if (!is_narrow(param) && has_master)
    throw py::value_error(std::string("master_params: expected None for ") + dtype_name(param) +
                          " params (master weights go with float16 / bfloat16 params), received a "
                          "list");
}

// The states' dtype when the first state array has dtype `first` (params of
// dtype `param`). Raises TypeError naming `name`.
inline DType state_dtype(DType param, DType first, std::string_view name) {
  if (!is_narrow(param)) return param;  // checked per array as "the dtype of params[0]"
  if (first != DType::F32 && first != DType::BF16)
    throw py::type_error(name + ": expected dtype float32 or bfloat16 (optimizer states of " +
                         dtype_name(param) + " params), received " + dtype_name(first));
  return first;
}

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
                            {"exp_avg", exp_avg, true, Role::State},
                            {"exp_avg_sq", exp_avg_sq, true, Role::State}};
  if (amsgrad) s.push_back({"max_exp_avg_sq", max_exp_avg_sq, true, Role::State});
  return s;
}

inline std::vector<SlotArg> sgd_slots(py::handle params, py::handle grads,
                                      py::handle momentum_buffer, double momentum) {
  std::vector<SlotArg> s = {{"params", params, true}, {"grads", grads, false}};
  if (momentum != 0.0) s.push_back({"momentum_buffer", momentum_buffer, true, Role::State});
  return s;
}

inline std::vector<SlotArg> rmsprop_slots(py::handle params, py::handle grads,
                                          py::handle square_avg, py::handle grad_avg,
                                          py::handle momentum_buffer, bool centered,
                                          double momentum) {
  std::vector<SlotArg> s = {{"params", params, true},
                            {"grads", grads, false},
                            {"square_avg", square_avg, true, Role::State}};
  if (centered) s.push_back({"grad_avg", grad_avg, true, Role::State});
  if (momentum > 0.0) s.push_back({"momentum_buffer", momentum_buffer, true, Role::State});
  return s;
}

inline std::vector<SlotArg> adagrad_slots(py::handle params, py::handle grads,
                                          py::handle state_sum) {
  return {{"params", params, true},
          {"grads", grads, false},
          {"state_sum", state_sum, true, Role::State}};
}

// Appends the master weights (the last slot) when given.
inline std::vector<SlotArg> with_master(std::vector<SlotArg> s, py::handle master_params) {
  if (!master_params.is_none()) s.push_back({"master_params", master_params, true, Role::Master});
  return s;
}

// Defines the optimizer step `name`: `fn` with the positional argument names
// `names`, then the keyword arguments every step takes (grad_scale,
// found_inf, master_params, stochastic_rounding, seed, rng_offset), with
// found_inf defaulting to `found_inf_default` (false on the CPU, where it is a
// bool read on the host; None on the GPU, where it is a device array).
template <class Fn, class... Names>
void def_step(py::module_& m, const char* name, Fn&& fn, const char* doc,
              py::object found_inf_default, Names... names) {
  m.def(name, std::forward<Fn>(fn), names..., py::arg("grad_scale") = 1.0,
        py::arg("found_inf") = found_inf_default, py::arg("master_params") = py::none(),
        py::arg("stochastic_rounding") = false, py::arg("seed") = uint64_t(0),
        py::arg("rng_offset") = uint64_t(0), doc);
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

// ---------------------------------------------------------------------------
// the check of a call's lists
// ---------------------------------------------------------------------------

// A validated TensorList plus its dtypes (params and grads; states). The
// pointer and count tables live in thread-local storage reused across calls
// (no allocation in steady state), so a TensorList is only valid until the
// next check on the same thread.
struct CheckedList {
  TensorList tl;
  DType dtype = DType::F32;
  DType state = DType::F32;
};

// The tables of one module's checks on one thread.
struct ListScratch {
  std::vector<void*> ptr;
  std::vector<int64_t> offsets;
  std::vector<int64_t> numel;
  std::vector<Interval> intervals;
};
inline ListScratch& list_scratch() {
  thread_local ListScratch s;
  return s;
}

// One checked array of a list: its address and element count.
struct ListItem {
  uintptr_t ptr;
  int64_t numel;
};

// Checks that every slot is a non-empty list/tuple of the same length as the
// first one (the params), of C-contiguous aligned arrays with the shape of the
// matching param, writable where the kernel writes, and that no two arrays
// share memory. Dtypes by role (SlotArg::role): params and grads float32 or
// float64 with states of the same dtype, or float16 / bfloat16 with float32
// master weights and float32 or bfloat16 states (check_master, state_dtype).
// `step`: the lists are an optimizer step's (master weights checked against
// the params' dtype); false for a plain list of arrays of one dtype.
// Raises TypeError / ValueError naming the argument, the expected and the
// received value.
//
// `Reader` reads the arrays of one backend:
//   Want                          what every array of a slot must be; has itemsize
//   Want want(DType d)            for arrays of dtype d
//   bool dtype(s, i, first, out, received)
//                                 item i of slot s as an array (TypeError when it
//                                 is not one; `first`: it is params[0]); false when
//                                 its dtype is none of the four, its name then in
//                                 `received`
//   ListItem item(slots, i, k, want, why)
//                                 item i of slot k, checked (dtype `want`, because
//                                 `why`; shape of params[i]; layout; writability)
template <class Reader>
CheckedList check_lists_with(Reader& rd, const std::vector<SlotArg>& slots, bool step) {
  using Want = typename Reader::Want;
  const SlotArg& first = slots.front();
  const py::ssize_t n = common_length(slots);

  std::string received;
  DType pdt;
  if (!rd.dtype(first, 0, true, pdt, received))
    throw py::type_error(item_name(first, 0) +
                         ": expected dtype float32, float64, float16 or bfloat16, received " +
                         received);
  if (step) check_master(pdt, find_role(slots, Role::Master) != nullptr);
  DType sdt = pdt;
  std::string state_why = "the dtype of " + item_name(first, 0);
  if (const SlotArg* st = find_role(slots, Role::State); st != nullptr && is_narrow(pdt)) {
    const std::string name = item_name(*st, 0);
    DType d;
    if (!rd.dtype(*st, 0, false, d, received))
      throw py::type_error(name + ": expected dtype float32 or bfloat16 (optimizer states of " +
                           dtype_name(pdt) + " params), received " + received);
    sdt = state_dtype(pdt, d, name);
    state_why = "the dtype of " + name;
  }

  // the dtype each slot must have, and why (for messages)
  const int nslots = int(slots.size());
  std::vector<std::pair<Want, std::string>> want;
  want.reserve(size_t(nslots));
  for (const SlotArg& s : slots) {
    if (s.role == Role::Master)
      want.emplace_back(rd.want(DType::F32), "master weights are float32");
    else if (s.role == Role::State)
      want.emplace_back(rd.want(sdt), state_why);
    else
      want.emplace_back(rd.want(pdt), "the dtype of " + item_name(first, 0));
  }

  ListScratch& sc = list_scratch();
  sc.ptr.resize(size_t(n) * nslots);
  sc.offsets.resize(size_t(n) + 1);
  sc.numel.resize(size_t(n));
  sc.intervals.clear();
  sc.offsets[0] = 0;
  for (py::ssize_t i = 0; i < n; ++i) {
    for (int k = 0; k < nslots; ++k) {
      const ListItem a = rd.item(slots, i, k, want[size_t(k)].first, want[size_t(k)].second);
      sc.ptr[size_t(i) * nslots + k] = reinterpret_cast<void*>(a.ptr);
      if (a.numel > 0)
        sc.intervals.push_back(
            {a.ptr, a.ptr + uintptr_t(a.numel * want[size_t(k)].first.itemsize), k, int64_t(i)});
      if (k == 0) {
        sc.numel[size_t(i)] = a.numel;
        sc.offsets[size_t(i) + 1] = sc.offsets[size_t(i)] + a.numel;
      }
    }
  }

  require_disjoint(sc.intervals, slots);

  CheckedList out;
  out.tl.n = n;
  out.tl.slots = nslots;
  out.tl.ptr = sc.ptr.data();
  out.tl.offsets = sc.offsets.data();
  out.tl.numel = sc.numel.data();
  out.dtype = pdt;
  out.state = sdt;
  return out;
}

// The storage layout of a checked optimizer step (found_inf: the GPU
// binding's to set).
inline StepLayout step_layout(const CheckedList& c, bool stochastic, uint64_t seed,
                              uint64_t offset) {
  StepLayout lay;
  lay.param = c.dtype;
  lay.state = c.state;
  lay.stochastic = stochastic && is_narrow(c.dtype);
  lay.seed = seed;
  lay.offset = offset;
  return lay;
}

}  // namespace bind
}  // namespace fusedtrain

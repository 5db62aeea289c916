#include "bind/tensor_list.h"

#include "bind/arrays.h"

#include <algorithm>
#include <cstdint>

namespace fusedtrain::bind {

namespace {

struct Scratch {
  std::vector<void*> ptr;
  std::vector<int64_t> offsets;
  std::vector<Interval> intervals;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}


bool same_shape(const py::array& a, const py::array& b) {
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) != b.shape(d)) return false;
  return true;
}


// Raises the descriptive error for slots[k][i], which failed the fast check.
[[noreturn]] void raise_bad_item(const std::vector<SlotArg>& slots, const SlotArg& first,
                                 py::ssize_t i, int k, int num) {
  const SlotArg& s = slots[k];
  py::handle h = PySequence_Fast_ITEMS(s.list.ptr())[i];
  const py::array a = as_array(item_name(s, i), h);
  same_dtype(item_name(s, i), a, num, "the dtype of " + item_name(first, 0));
  const auto param = py::reinterpret_borrow<py::array>(PySequence_Fast_ITEMS(first.list.ptr())[i]);
  if (!same_shape(a, param))
    throw py::value_error(item_name(s, i) + ": expected shape " + shape_str(param) +
                          " (the shape of " + item_name(first, i) + "), received " +
                          shape_str(a));
  contiguous(item_name(s, i), a, s.writable);
  throw py::value_error(item_name(s, i) + ": rejected");  // unreachable: one check above fails
}

}  // namespace

CheckedList check_lists(const std::vector<SlotArg>& slots) {
  const SlotArg& first = slots.front();
  const py::ssize_t n = common_length(slots);

  PyObject** params = PySequence_Fast_ITEMS(first.list.ptr());
  if (!py::isinstance<py::array>(params[0]))
    throw py::type_error(item_name(first, 0) + ": expected a numpy.ndarray, received " +
                         type_name(params[0]));
  const auto p0 = py::reinterpret_borrow<py::array>(params[0]);
  const int num = float_dtype(item_name(first, 0), p0);

  Scratch& sc = scratch();
  const int nslots = int(slots.size());
  sc.ptr.resize(size_t(n) * nslots);
  sc.offsets.resize(size_t(n) + 1);
  sc.intervals.clear();
  sc.offsets[0] = 0;

  // Fast path on the raw array structs (no reference counting, no
  // allocation); any mismatch re-checks that array with the descriptive
  // checks of bind/arrays.h, which raise.
  const auto& api = py::detail::npy_api::get();
  constexpr int kFlags = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ |
                         py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  constexpr char kSwapped = (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) ? '>' : '<';
  const int64_t itemsize = num == f32_num() ? 4 : 8;
  for (py::ssize_t i = 0; i < n; ++i) {
    const auto* param = py::detail::array_proxy(params[i]);
    for (int k = 0; k < nslots; ++k) {
      const SlotArg& s = slots[k];
      PyObject* h = PySequence_Fast_ITEMS(s.list.ptr())[i];
      bool ok = api.PyArray_Check_(h);
      const auto* a = py::detail::array_proxy(h);
      if (ok) {
        const auto* d = py::detail::array_descriptor_proxy(a->descr);
        ok = d->type_num == num && d->byteorder != kSwapped && (a->flags & kFlags) == kFlags &&
             (!s.writable || (a->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_)) &&
             a->nd == param->nd;
        for (int dim = 0; ok && dim < a->nd; ++dim) ok = a->dimensions[dim] == param->dimensions[dim];
      }
      if (!ok) raise_bad_item(slots, first, i, k, num);
      int64_t size = 1;
      for (int dim = 0; dim < a->nd; ++dim) size *= a->dimensions[dim];
      sc.ptr[size_t(i) * nslots + k] = a->data;
      if (size > 0)
        sc.intervals.push_back({uintptr_t(a->data), uintptr_t(a->data) + uintptr_t(size * itemsize),
                                k, int64_t(i)});
      if (k == 0) sc.offsets[i + 1] = sc.offsets[i] + size;
    }
  }

  require_disjoint(sc.intervals, slots);

  CheckedList out;
  out.tl.n = n;
  out.tl.slots = nslots;
  out.tl.ptr = sc.ptr.data();
  out.tl.offsets = sc.offsets.data();
  out.dtype = num == f32_num() ? cpu::DType::F32 : cpu::DType::F64;
  return out;
}

}  // namespace fusedtrain::bind

#include "bind/tensor_list.h"

#include <pybind11/numpy.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "bind/arrays.h"

namespace fusedtrain::bind {

namespace {

bool same_shape(const py::array& a, const py::array& b) {
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) != b.shape(d)) return false;
  return true;
}

// Raises the descriptive error for slots[k][i], which failed the fast check
// (expected type number `num`, for the reason `why`).
[[noreturn]] void raise_bad_item(const std::vector<SlotArg>& slots, py::ssize_t i, int k, int num,
                                 std::string_view why) {
  const SlotArg& first = slots.front();
  const SlotArg& s = slots[k];
  py::handle h = PySequence_Fast_ITEMS(s.list.ptr())[i];
  const py::array a = as_array(item_name(s, i), h);
  same_dtype(item_name(s, i), a, num, why);
  const auto param = py::reinterpret_borrow<py::array>(PySequence_Fast_ITEMS(first.list.ptr())[i]);
  if (!same_shape(a, param))
    throw py::value_error(item_name(s, i) + ": expected shape " + shape_str(param) +
                          " (the shape of " + item_name(first, i) + "), received " +
                          shape_str(a));
  contiguous(item_name(s, i), a, s.writable);
  throw py::value_error(item_name(s, i) + ": rejected");  // unreachable: one check above fails
}

// NumPy arrays for check_lists_with: the fast path reads the raw array
// structs (no reference counting, no allocation); any mismatch re-checks that
// array with the descriptive checks of bind/arrays.h, which raise.
struct NumpyReader {
  struct Want {
    int num;  // NumPy type number
    int64_t itemsize;
  };

  static Want want(DType d) {
    switch (d) {
      case DType::F32: return {f32_num(), 4};
      case DType::F64: return {f64_num(), 8};
      case DType::F16: return {f16_num(), 2};
      case DType::BF16: return {bf16_num(), 2};
    }
    return {-1, 0};
  }

  static bool dtype(const SlotArg& s, py::ssize_t i, bool, DType& out, std::string& received) {
    const py::array a = as_array(item_name(s, i), PySequence_Fast_ITEMS(s.list.ptr())[i]);
    const int num = a.dtype().num();
    bool ok = native_order(a);
    if (num == f32_num()) out = DType::F32;
    else if (num == f64_num()) out = DType::F64;
    else if (num == f16_num()) out = DType::F16;
    else if (num == bf16_num()) out = DType::BF16;
    else ok = false;
    if (!ok) received = dtype_str(a);
    return ok;
  }

  static ListItem item(const std::vector<SlotArg>& slots, py::ssize_t i, int k, const Want& w,
                       const std::string& why) {
    const auto& api = py::detail::npy_api::get();
    constexpr int kFlags = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ |
                           py::detail::npy_api::NPY_ARRAY_ALIGNED_;
    constexpr char kSwapped = (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) ? '>' : '<';
    const SlotArg& s = slots[k];
    const auto* param = py::detail::array_proxy(PySequence_Fast_ITEMS(slots.front().list.ptr())[i]);
    PyObject* h = PySequence_Fast_ITEMS(s.list.ptr())[i];
    bool ok = api.PyArray_Check_(h);
    const auto* a = py::detail::array_proxy(h);
    if (ok) {
      const auto* d = py::detail::array_descriptor_proxy(a->descr);
      ok = d->type_num == w.num && d->byteorder != kSwapped && (a->flags & kFlags) == kFlags &&
           (!s.writable || (a->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_)) &&
           a->nd == param->nd;
      for (int dim = 0; ok && dim < a->nd; ++dim) ok = a->dimensions[dim] == param->dimensions[dim];
    }
    if (!ok) raise_bad_item(slots, i, k, w.num, why);
    int64_t size = 1;
    for (int dim = 0; dim < a->nd; ++dim) size *= a->dimensions[dim];
    return {uintptr_t(a->data), size};
  }
};

}  // namespace

CheckedList check_lists(const std::vector<SlotArg>& slots, bool step) {
  NumpyReader rd;
  return check_lists_with(rd, slots, step);
}

}  // namespace fusedtrain::bind

#include "bind/arrays.h"

#include <cstdint>

namespace fusedtrain {
namespace bind {

int bf16_num() {
  static const int n = []() {
    try {
      return py::dtype::from_args(py::module_::import("ml_dtypes").attr("bfloat16")).num();
    } catch (py::error_already_set&) {
      return -1;
    }
  }();
  return n;
}

std::string shape_str(const py::array& a) {
  std::string out = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    out += std::to_string(a.shape(d));
    out += (a.ndim() == 1) ? "," : (d + 1 < a.ndim() ? ", " : "");
  }
  return out + ")";
}

std::string type_name(py::handle h) { return Py_TYPE(h.ptr())->tp_name; }

std::string dtype_str(const py::array& a) { return std::string(py::str(a.dtype())); }

bool native_order(const py::array& a) {
  const char bo = a.dtype().byteorder();
  constexpr char kSwapped = (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) ? '>' : '<';
  return bo != kSwapped;
}

py::array as_array(std::string_view name, py::handle h) {
  if (!py::isinstance<py::array>(h))
    throw py::type_error(name + ": expected a numpy.ndarray, received " + type_name(h));
  return py::reinterpret_borrow<py::array>(h);
}

int float_dtype(std::string_view name, const py::array& a) {
  const int num = a.dtype().num();
  if ((num != f32_num() && num != f64_num()) || !native_order(a))
    throw py::type_error(name + ": expected dtype float32 or float64, received " + dtype_str(a));
  return num;
}

void same_dtype(std::string_view name, const py::array& a, int num, std::string_view why) {
  if (a.dtype().num() != num || !native_order(a))
    throw py::type_error(name + ": expected dtype " +
                         std::string(py::str(py::dtype(num))) + " (" + why + "), received " +
                         dtype_str(a));
}

void contiguous(std::string_view name, const py::array& a, bool writable) {
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(name +
                          ": expected a C-contiguous array, received a non-contiguous view "
                          "(pass numpy.ascontiguousarray(...) and keep that array)");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(name + ": expected an aligned array, received an unaligned one");
  if (writable && !a.writeable())
    throw py::value_error(name +
                          ": expected a writable array (it is written in place), received a "
                          "read-only array");
}

void ndim_is(std::string_view name, const py::array& a, int ndim) {
  if (a.ndim() != ndim)
    throw py::value_error(name + ": expected a " + std::to_string(ndim) +
                          "-d array, received shape " + shape_str(a));
}

void shape_is(std::string_view name, const py::array& a,
              std::initializer_list<py::ssize_t> shape) {
  bool ok = a.ndim() == py::ssize_t(shape.size());
  py::ssize_t d = 0;
  for (auto it = shape.begin(); ok && it != shape.end(); ++it, ++d) ok = a.shape(d) == *it;
  if (!ok) {
    std::string want = "(";
    d = 0;
    for (auto s : shape) {
      want += std::to_string(s);
      want += (shape.size() == 1) ? "," : (++d < py::ssize_t(shape.size()) ? ", " : "");
    }
    throw py::value_error(name + ": expected shape " + want + "), received " + shape_str(a));
  }
}

void disjoint(std::string_view name_a, const py::array& a, std::string_view name_b,
              const py::array& b) {
  const auto a0 = uintptr_t(a.data()), a1 = a0 + uintptr_t(a.nbytes());
  const auto b0 = uintptr_t(b.data()), b1 = b0 + uintptr_t(b.nbytes());
  if (a0 < b1 && b0 < a1 && a.nbytes() > 0 && b.nbytes() > 0)
    throw py::value_error(name_a + " and " + name_b +
                          ": expected separate arrays, received arrays that share memory");
}

}  // namespace bind
}  // namespace fusedtrain

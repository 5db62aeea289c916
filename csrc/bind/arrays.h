// Argument checks for single NumPy arrays, shared by the bindings. Each raises
// TypeError / ValueError naming the argument, the expected and the received
// value. Nothing is converted: in-place buffers are taken as they are.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <string>
#include <string_view>

#include "bind/names.h"

namespace fusedtrain {
namespace bind __attribute__((visibility("hidden"))) {

namespace py = pybind11;

std::string shape_str(const py::array& a);
std::string type_name(py::handle h);
std::string dtype_str(const py::array& a);

inline int f32_num() {
  static const int n = py::dtype::of<float>().num();
  return n;
}
inline int f64_num() {
  static const int n = py::dtype::of<double>().num();
  return n;
}

inline int f16_num() {
  static const int n = py::dtype("float16").num();
  return n;
}
// ml_dtypes.bfloat16's type number (assigned when ml_dtypes registers it), or
// -1 when ml_dtypes cannot be imported.
int bf16_num();

// True when a's dtype is stored in this machine's byte order ('>f4' on a
// little-endian machine has float32's type number but is not).
bool native_order(const py::array& a);

// h must be a numpy.ndarray.
py::array as_array(std::string_view name, py::handle h);
// a's dtype must be float32 or float64; returns its type number.
int float_dtype(std::string_view name, const py::array& a);
// a's dtype must be `num` (`why` says where that dtype comes from, e.g. "the dtype of x").
void same_dtype(std::string_view name, const py::array& a, int num, std::string_view why);
// C-contiguous and aligned; writable too when `writable`.
void contiguous(std::string_view name, const py::array& a, bool writable);
// a.shape must equal `shape`.
void shape_is(std::string_view name, const py::array& a, std::initializer_list<py::ssize_t> shape);
void ndim_is(std::string_view name, const py::array& a, int ndim);
// a and b must not share memory (an output overlapping an input).
void disjoint(std::string_view name_a, const py::array& a, std::string_view name_b,
              const py::array& b);

}  // namespace bind
}  // namespace fusedtrain

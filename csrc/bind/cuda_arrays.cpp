#include "bind/cuda_arrays.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "cuda/runtime.h"

namespace fusedtrain {
namespace bind {

namespace {

[[noreturn]] void malformed(std::string_view name, const py::handle cai) {
  throw py::type_error(name +
                       ": expected a __cuda_array_interface__ dict with 'data': (ptr, readonly), "
                       "'shape', 'typestr' and optional 'strides', received " +
                       std::string(py::repr(cai)).substr(0, 200));
}

bool as_int64(PyObject* o, int64_t& out) {
  if (!PyLong_Check(o)) return false;
  const long long v = PyLong_AsLongLong(o);
  if (v == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  out = v;
  return true;
}

}  // namespace

std::string type_name(py::handle h) {
  py::handle t = py::type::handle_of(h);
  const std::string mod = py::str(t.attr("__module__"));
  const std::string name = py::str(t.attr("__qualname__"));
  return mod == "builtins" ? name : mod + "." + name;
}

std::string shape_str(const DevArray& a) {
  std::string out = "(";
  for (int d = 0; d < a.ndim; ++d) {
    out += std::to_string(a.shape[d]);
    out += a.ndim == 1 ? "," : (d + 1 < a.ndim ? ", " : "");
  }
  return out + ")";
}

std::string dtype_name(std::string_view typestr) {
  if (typestr == "<f4") return "float32";
  if (typestr == "<f8") return "float64";
  if (typestr == "<f2") return "float16";
  if (typestr == "<V2") return "bfloat16";  // as torch and ml_dtypes export it
  try {
    return py::str(py::module_::import("numpy").attr("dtype")(typestr));
  } catch (py::error_already_set&) {
    return "'" + typestr + "'";
  }
}

int64_t itemsize_of(std::string_view typestr) {
  if (typestr == "<f4") return 4;
  if (typestr == "<f8") return 8;
  return typestr == "<f2" || typestr == "<V2" ? 2 : 0;
}


void parse(std::string_view name, py::handle h, std::string_view expected, DevArray& a) {
  PyObject* raw = PyObject_GetAttrString(h.ptr(), "__cuda_array_interface__");
  if (raw == nullptr) {
    if (!PyErr_ExceptionMatches(PyExc_AttributeError)) throw py::error_already_set();
    PyErr_Clear();
    throw py::type_error(name + ": expected " + expected + ", received " + type_name(h));
  }
  const py::object cai = py::reinterpret_steal<py::object>(raw);
  if (!PyDict_Check(cai.ptr())) malformed(name, cai);
  PyObject* data = PyDict_GetItemString(cai.ptr(), "data");
  PyObject* shape = PyDict_GetItemString(cai.ptr(), "shape");
  PyObject* typestr = PyDict_GetItemString(cai.ptr(), "typestr");
  PyObject* strides = PyDict_GetItemString(cai.ptr(), "strides");
  PyObject* mask = PyDict_GetItemString(cai.ptr(), "mask");
  if (data == nullptr || shape == nullptr || typestr == nullptr || !PyTuple_Check(data) ||
      PyTuple_GET_SIZE(data) != 2 || !PyTuple_Check(shape) || !PyUnicode_Check(typestr) ||
      (strides != nullptr && strides != Py_None && !PyTuple_Check(strides)))
    malformed(name, cai);
  if (mask != nullptr && mask != Py_None)
    throw py::value_error(name + ": expected an array without a mask, received a masked array");

  int64_t ptr = 0;
  if (!as_int64(PyTuple_GET_ITEM(data, 0), ptr) || ptr < 0) malformed(name, cai);
  const int ro = PyObject_IsTrue(PyTuple_GET_ITEM(data, 1));
  if (ro < 0) throw py::error_already_set();
  a.ptr = uintptr_t(ptr);
  a.readonly = ro != 0;

  const py::ssize_t ndim = PyTuple_GET_SIZE(shape);
  if (ndim > kMaxDims) malformed(name, cai);
  a.ndim = int(ndim);
  a.numel = 1;
  bool overflow = false;
  for (int d = 0; d < a.ndim; ++d) {
    if (!as_int64(PyTuple_GET_ITEM(shape, d), a.shape[d]) || a.shape[d] < 0) malformed(name, cai);
    overflow = overflow || __builtin_mul_overflow(a.numel, a.shape[d], &a.numel);
  }
  for (int d = 0; d < a.ndim; ++d)
    if (a.shape[d] == 0) a.numel = 0, overflow = false;
  if (overflow) malformed(name, cai);

  Py_ssize_t len = 0;
  const char* ts = PyUnicode_AsUTF8AndSize(typestr, &len);
  if (ts == nullptr) throw py::error_already_set();
  a.typestr.assign(ts, size_t(len));

  // C-contiguous as NumPy defines it: strides of extent-1 axes and of empty
  // arrays do not matter.
  a.contiguous = true;
  if (strides != nullptr && strides != Py_None) {
    if (PyTuple_GET_SIZE(strides) != ndim) malformed(name, cai);
    int64_t expect = std::max<int64_t>(itemsize_of(a.typestr), 1);
    for (int d = a.ndim - 1; d >= 0; --d) {
      int64_t st = 0;
      if (!as_int64(PyTuple_GET_ITEM(strides, d), st)) malformed(name, cai);
      if (a.shape[d] != 1 && st != expect) a.contiguous = false;
      expect *= a.shape[d];
    }
    if (a.numel == 0) a.contiguous = true;
  }
}

bool same_shape(const DevArray& a, const DevArray& b) {
  return a.ndim == b.ndim && std::equal(a.shape, a.shape + a.ndim, b.shape);
}

bool has_device() {
  static const bool yes = cuda::query_devices().count > 0;
  return yes;
}

// Called after the checks, before a launch: a clear error without a device.
void require_device() {
  if (has_device()) return;
  const auto q = cuda::query_devices();
  throw std::runtime_error(
      "fusedtrain._cuda: no CUDA device is available (" +
      (q.message.empty() ? std::string("no device found") : q.message) +
      "); pass NumPy arrays to run on the CPU");
}

void check_device_memory(std::string_view name, const void* ptr, int device) {
  const cuda::PointerQuery q = cuda::query_pointer(ptr);
  if (q.error != 0)
    throw py::value_error(name + ": expected GPU memory, cudaPointerGetAttributes failed: " +
                          q.message);
  if (!q.device_memory)
    throw py::value_error(name + ": expected GPU memory (device or managed), received "
                                 "host or unregistered memory");
  if (q.device != device)
    throw py::value_error(name + ": expected an array on the current CUDA device " +
                          std::to_string(device) + ", received an array on device " +
                          std::to_string(q.device));
}

int64_t typestr_itemsize(std::string_view typestr) {
  if (typestr.size() < 3) return 0;
  int64_t v = 0;
  for (size_t k = 2; k < typestr.size(); ++k) {
    if (typestr[k] < '0' || typestr[k] > '9' || v > (int64_t(1) << 20)) return 0;
    v = v * 10 + (typestr[k] - '0');
  }
  return v;
}

void float_dtype(std::string_view name, const DevArray& a) {
  if (a.typestr != "<f4" && a.typestr != "<f8")
    throw py::type_error(name + ": expected dtype float32 or float64, received " +
                         dtype_name(a.typestr));
}

void same_dtype(std::string_view name, const DevArray& a, std::string_view typestr,
                std::string_view why) {
  if (a.typestr != typestr)
    throw py::type_error(name + ": expected dtype " + dtype_name(typestr) + " (" + why +
                         "), received " + dtype_name(a.typestr));
}

void contiguous(std::string_view name, const DevArray& a, bool writable) {
  if (!a.contiguous)
    throw py::value_error(name +
                          ": expected a C-contiguous array, received a non-contiguous view "
                          "(pass cupy.ascontiguousarray(...) and keep that array)");
  const int64_t size = std::max<int64_t>(typestr_itemsize(a.typestr), 1);
  if (a.ptr % uintptr_t(size) != 0)
    throw py::value_error(name + ": expected an aligned array, received an unaligned one");
  if (writable && a.readonly)
    throw py::value_error(name +
                          ": expected a writable array (it is written in place), received a "
                          "read-only array");
}

void ndim_is(std::string_view name, const DevArray& a, int ndim) {
  if (a.ndim != ndim)
    throw py::value_error(name + ": expected a " + std::to_string(ndim) +
                          "-d array, received shape " + shape_str(a));
}

void shape_is(std::string_view name, const DevArray& a, std::initializer_list<int64_t> shape) {
  bool ok = a.ndim == int(shape.size());
  int d = 0;
  for (auto it = shape.begin(); ok && it != shape.end(); ++it, ++d) ok = a.shape[d] == *it;
  if (!ok) {
    DevArray want;
    want.ndim = int(shape.size());
    d = 0;
    for (auto v : shape) want.shape[d++] = v;
    throw py::value_error(name + ": expected shape " + shape_str(want) + ", received " +
                          shape_str(a));
  }
}

void same_shape_as(std::string_view name, const DevArray& a, std::string_view ref_name,
                   const DevArray& ref) {
  if (!same_shape(a, ref))
    throw py::value_error(name + ": expected shape " + shape_str(ref) + " (the shape of " +
                          ref_name + "), received " + shape_str(a));
}

void disjoint(std::string_view name_a, const DevArray& a, std::string_view name_b,
              const DevArray& b) {
  const uintptr_t a0 = a.ptr, a1 = a0 + uintptr_t(nbytes(a));
  const uintptr_t b0 = b.ptr, b1 = b0 + uintptr_t(nbytes(b));
  if (a0 < b1 && b0 < a1 && nbytes(a) > 0 && nbytes(b) > 0)
    throw py::value_error(name_a + " and " + name_b +
                          ": expected separate arrays, received arrays that share memory");
}

void on_current_device(std::initializer_list<std::pair<const char*, const DevArray*>> arrays) {
  if (!has_device()) return;  // stand-ins carry fake pointers
  const int device = cuda::current_device();
  for (const auto& [name, a] : arrays)
    if (a != nullptr && a->numel > 0) check_device_memory(name, reinterpret_cast<void*>(a->ptr), device);
}

py::object make_output(py::handle empty, const char* name, const py::tuple& shape,
                       std::string_view typestr, DevArray& a) {
  py::object o = empty(shape, typestr);
  parse(name, o, "a GPU array from the allocator", a);
  if (a.typestr != typestr || !a.contiguous || a.readonly)
    throw std::runtime_error(std::string(name) +
                             ": the allocator returned an array of another dtype or layout");
  return o;
}

void* make_workspace(py::handle workspace, size_t bytes, uintptr_t align, py::object& keep) {
  keep = workspace(py::int_(bytes));
  DevArray a;
  parse("workspace", keep, "a GPU array from the workspace allocator", a);
  if (uint64_t(nbytes(a)) < bytes || a.ptr % align != 0 || a.readonly)
    throw std::runtime_error("workspace: the allocator returned " + std::to_string(nbytes(a)) +
                             " bytes (or an unaligned or read-only array); " +
                             std::to_string(bytes) + " writable bytes aligned to " +
                             std::to_string(align) + " were needed");
  return reinterpret_cast<void*>(a.ptr);
}

}  // namespace bind
}  // namespace fusedtrain

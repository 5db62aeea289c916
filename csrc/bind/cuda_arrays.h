// __cuda_array_interface__ parsing and the checks shared by the _cuda
// bindings (optimizers, losses, dropout): they read only the interface dicts,
// so they run without a GPU too (on stand-in objects); where a GPU is
// present, pointers are also checked to be device memory of the current
// device. Messages follow the CPU bindings' (bind/arrays.h).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include <utility>

#include "bind/names.h"
#include "fusedtrain/dtype.h"

namespace fusedtrain {
namespace bind __attribute__((visibility("hidden"))) {

namespace py = pybind11;

constexpr int kMaxDims = 64;  // NumPy 2's limit

// The parts of one __cuda_array_interface__ the kernels depend on.
struct DevArray {
  uintptr_t ptr = 0;
  bool readonly = false;
  int ndim = 0;
  int64_t shape[kMaxDims];
  int64_t numel = 1;
  std::string typestr;
  bool contiguous = true;
};

// "module.QualName" of h's type ("numpy.ndarray", "cupy.ndarray").
std::string type_name(py::handle h);
std::string shape_str(const DevArray& a);
// '<f4' -> float32 as NumPy names it ('<V2' -> bfloat16); the raw typestr when
// NumPy cannot parse it.
std::string dtype_name(std::string_view typestr);
// The optimizer dtypes' item sizes: 4 for '<f4', 8 for '<f8', 2 for '<f2' and
// '<V2' (bfloat16), 0 for anything else.
int64_t itemsize_of(std::string_view typestr);

// Reads h.__cuda_array_interface__ into `a`. Raises TypeError naming `name`
// when h has none (`expected` says what was expected) or it is malformed.
void parse(std::string_view name, py::handle h, std::string_view expected, DevArray& a);
bool same_shape(const DevArray& a, const DevArray& b);

// The kernels' view of a checked array: its device address, and its dtype
// when float_dtype accepted it ('<f4' or '<f8').
inline void* ptr_of(const DevArray& a) { return reinterpret_cast<void*>(a.ptr); }
inline DType dtype_of(const DevArray& a) { return a.typestr == "<f4" ? DType::F32 : DType::F64; }
// The cudaStream_t of an entry point's `stream` argument (an integer; 0 is the
// legacy default stream).
inline void* as_stream(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

// A GPU is usable (queried once).
bool has_device();
// Called after the checks, before a launch: a clear RuntimeError without a device.
void require_device();
// `ptr` must be device (or managed) memory of `device`; raises ValueError
// naming `name` otherwise. Only meaningful where has_device().
void check_device_memory(std::string_view name, const void* ptr, int device);

// ---------------------------------------------------------------------------
// single-array checks (the loss, dropout and dense bindings), with the
// messages of bind/arrays.h
// ---------------------------------------------------------------------------
// Bytes per element of any typestr ('<f4' -> 4, '|b1' -> 1); 0 when unreadable.
int64_t typestr_itemsize(std::string_view typestr);
inline int64_t nbytes(const DevArray& a) { return a.numel * typestr_itemsize(a.typestr); }
// a's dtype must be float32 or float64.
void float_dtype(std::string_view name, const DevArray& a);
// a's dtype must be `typestr` (`why` says where that dtype comes from).
void same_dtype(std::string_view name, const DevArray& a, std::string_view typestr,
                std::string_view why);
// C-contiguous and aligned; writable too when `writable`.
void contiguous(std::string_view name, const DevArray& a, bool writable);
void shape_is(std::string_view name, const DevArray& a, std::initializer_list<int64_t> shape);
void ndim_is(std::string_view name, const DevArray& a, int ndim);
// a.shape must equal ref.shape (`ref_name` says whose shape that is).
void same_shape_as(std::string_view name, const DevArray& a, std::string_view ref_name,
                   const DevArray& ref);
// a and b must not share memory (an output overlapping an input).
void disjoint(std::string_view name_a, const DevArray& a, std::string_view name_b,
              const DevArray& b);
// Where a GPU is present: every non-empty array of the call lives on the
// current device (so arrays on two devices raise before anything runs).
void on_current_device(std::initializer_list<std::pair<const char*, const DevArray*>> arrays);

// ---------------------------------------------------------------------------
// outputs and scratch from the caller's allocators (the bindings allocate
// nothing themselves; called only after every check has passed)
// ---------------------------------------------------------------------------
// A new output from `empty(shape, typestr)`, parsed into `a` and checked to be
// what was asked for.
py::object make_output(py::handle empty, const char* name, const py::tuple& shape,
                       std::string_view typestr, DevArray& a);
// At least `bytes` writable bytes from `workspace(bytes)`, aligned to `align`;
// `keep` holds the array while it is used.
void* make_workspace(py::handle workspace, size_t bytes, uintptr_t align, py::object& keep);

}  // namespace bind
}  // namespace fusedtrain

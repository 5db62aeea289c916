// _cuda: the CUDA side of fusedtrain. Imports on machines without a GPU or a
// CUDA runtime (cudart is linked statically); is_available() answers False.
//
// The optimizer entry points take the positional arguments of _core's (see
// bind/optim_bind.cpp, ending with dry_run) plus a trailing `stream`: the
// cudaStream_t to launch on, as an integer (0: the legacy default stream).
// Arrays are any objects exposing __cuda_array_interface__ (CuPy arrays,
// torch CUDA tensors). They are validated exactly as the CPU path validates
// NumPy arrays, with the same messages, before anything is launched; the
// checks read only the interface dicts, so they run without a GPU too (on
// stand-in objects), and dry_run=True runs nothing else. Where a GPU is
// present, every pointer must also be device memory of the current device.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bind/list_args.h"
#include "cuda/optim_cuda.h"
#include "cuda/runtime.h"

namespace py = pybind11;

namespace fusedtrain {
namespace bind __attribute__((visibility("hidden"))) {

namespace {

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

// Per-thread tables reused across calls (no allocation in steady state).
struct Scratch {
  std::vector<void*> ptr;
  std::vector<int64_t> numel;
  std::vector<Interval> intervals;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

struct CheckedList {
  cuda::DeviceList dl;
  cuda::DType dtype;
  cuda::DType state = cuda::DType::F32;
};


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

// The optimizer dtypes' typestrs: bfloat16 is '<V2', as torch and ml_dtypes
// export it.
bool dtype_of(const std::string& typestr, cuda::DType& out) {
  if (typestr == "<f4") out = cuda::DType::F32;
  else if (typestr == "<f8") out = cuda::DType::F64;
  else if (typestr == "<f2") out = cuda::DType::F16;
  else if (typestr == "<V2") out = cuda::DType::BF16;
  else return false;
  return true;
}

const char* typestr_of(cuda::DType d) {
  switch (d) {
    case cuda::DType::F32: return "<f4";
    case cuda::DType::F64: return "<f8";
    case cuda::DType::F16: return "<f2";
    case cuda::DType::BF16: return "<V2";
  }
  return "";
}

// '<f4' -> float32 as NumPy names it; the raw typestr when NumPy cannot parse it.
std::string typestr_name(const std::string& typestr) {
  if (cuda::DType d; dtype_of(typestr, d)) return dtype_name(d);
  try {
    return py::str(py::module_::import("numpy").attr("dtype")(typestr));
  } catch (py::error_already_set&) {
    return "'" + typestr + "'";
  }
}

int64_t itemsize_of(const std::string& typestr) {
  cuda::DType d;
  if (!dtype_of(typestr, d)) return 0;
  return d == cuda::DType::F64 ? 8 : d == cuda::DType::F32 ? 4 : 2;
}


[[noreturn]] void malformed(const std::string& name, const py::handle cai) {
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

// Reads h.__cuda_array_interface__ into `a`. Raises TypeError naming `name`
// when h has none (`expected` says what was expected) or it is malformed.
void parse(const std::string& name, py::handle h, const std::string& expected, DevArray& a) {
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

// Checks every slot as bind/tensor_list.cpp checks NumPy lists (same
// messages): a non-empty list/tuple per slot, all of one length, of
// C-contiguous aligned float32 / float64 GPU arrays of one dtype with the
// shape of the matching param, writable where the kernel writes, no two
// sharing memory. Where a GPU is present, every non-empty array must also be
// device memory on the current device. Raises TypeError / ValueError naming
// the argument, the expected and the received value.
CheckedList check_lists(const std::vector<SlotArg>& slots, bool step = true) {
  const SlotArg& first = slots.front();
  const py::ssize_t n = common_length(slots);

  const std::string p0 = item_name(first, 0);
  const std::string like = "a GPU array like " + p0;
  DevArray param, cur;
  parse(p0, PySequence_Fast_ITEMS(first.list.ptr())[0],
        "a GPU array (an object with __cuda_array_interface__)", param);
  cuda::DType pdt;
  if (!dtype_of(param.typestr, pdt))
    throw py::type_error(p0 + ": expected dtype float32, float64, float16 or bfloat16, received " +
                         typestr_name(param.typestr));
  if (step) check_master(pdt, find_role(slots, Role::Master) != nullptr);
  cuda::DType sdt = pdt;
  std::string state_why = "the dtype of " + p0;
  if (const SlotArg* st = find_role(slots, Role::State); st != nullptr && is_narrow(pdt)) {
    const std::string name = item_name(*st, 0);
    DevArray a;
    parse(name, PySequence_Fast_ITEMS(st->list.ptr())[0], like, a);
    cuda::DType d;
    if (!dtype_of(a.typestr, d))
      throw py::type_error(name + ": expected dtype float32 or bfloat16 (optimizer states of " +
                           dtype_name(pdt) + " params), received " + typestr_name(a.typestr));
    sdt = state_dtype(pdt, d, name);
    state_why = "the dtype of " + name;
  }
  // the typestr each slot must have, and why
  std::vector<std::pair<std::string, std::string>> want;
  for (const SlotArg& s : slots) {
    if (s.role == Role::Master)
      want.emplace_back("<f4", "master weights are float32");
    else if (s.role == Role::State)
      want.emplace_back(typestr_of(sdt), state_why);
    else
      want.emplace_back(param.typestr, "the dtype of " + p0);
  }

  Scratch& sc = scratch();
  const int nslots = int(slots.size());
  sc.ptr.resize(size_t(n) * nslots);
  sc.numel.resize(size_t(n));
  sc.intervals.clear();

  for (py::ssize_t i = 0; i < n; ++i) {
    for (int k = 0; k < nslots; ++k) {
      const SlotArg& s = slots[k];
      DevArray& a = k == 0 ? param : cur;
      const std::string name = item_name(s, i);
      if (i > 0 || k > 0) parse(name, PySequence_Fast_ITEMS(s.list.ptr())[i], like, a);
      if (a.typestr != want[k].first)
        throw py::type_error(name + ": expected dtype " + typestr_name(want[k].first) + " (" +
                             want[k].second + "), received " + typestr_name(a.typestr));
      const int64_t itemsize = itemsize_of(a.typestr);
      if (k > 0 && !same_shape(a, param))
        throw py::value_error(name + ": expected shape " + shape_str(param) + " (the shape of " +
                              item_name(first, i) + "), received " + shape_str(a));
      if (!a.contiguous)
        throw py::value_error(name +
                              ": expected a C-contiguous array, received a non-contiguous view "
                              "(pass cupy.ascontiguousarray(...) and keep that array)");
      if (a.ptr % uintptr_t(itemsize) != 0)
        throw py::value_error(name + ": expected an aligned array, received an unaligned one");
      if (s.writable && a.readonly)
        throw py::value_error(name +
                              ": expected a writable array (it is written in place), received a "
                              "read-only array");
      sc.ptr[size_t(i) * nslots + k] = reinterpret_cast<void*>(a.ptr);
      if (k == 0) sc.numel[size_t(i)] = a.numel;
      if (a.numel > 0)
        sc.intervals.push_back({a.ptr, a.ptr + uintptr_t(a.numel) * uintptr_t(itemsize), k, int64_t(i)});
    }
  }

  require_disjoint(sc.intervals, slots);  // as on the CPU

  // Where the memory is: only a GPU can say (stand-ins carry fake pointers).
  if (has_device()) {
    const int device = cuda::current_device();
    for (py::ssize_t i = 0; i < n; ++i) {
      if (sc.numel[size_t(i)] == 0) continue;
      for (int k = 0; k < nslots; ++k) {
        const cuda::PointerQuery q = cuda::query_pointer(sc.ptr[size_t(i) * nslots + k]);
        const std::string name = item_name(slots[k], i);
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
    }
  }

  CheckedList out;
  out.dl.n = n;
  out.dl.slots = nslots;
  out.dl.ptr = sc.ptr.data();
  out.dl.numel = sc.numel.data();
  out.dtype = pdt;
  out.state = sdt;
  return out;
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

void* as_stream(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

// A 1-element float32 GPU array (found_inf, read inside the kernels; or the
// flag found_nonfinite_ writes): its device pointer, checked to be device
// memory where a GPU is present. `name` names it in messages.
float* flag_ptr(const char* name, py::handle h, bool writable) {
  DevArray a;
  parse(name, h, "a 1-element float32 GPU array", a);
  if (a.typestr != "<f4" || a.numel != 1)
    throw py::type_error(std::string(name) +
                         ": expected a 1-element float32 GPU array, received dtype " +
                         typestr_name(a.typestr) + " and shape " + shape_str(a));
  if (a.ptr % 4 != 0)
    throw py::value_error(std::string(name) +
                          ": expected an aligned array, received an unaligned one");
  if (writable && a.readonly)
    throw py::value_error(std::string(name) +
                          ": expected a writable array, received a read-only array");
  if (has_device()) {
    const cuda::PointerQuery q = cuda::query_pointer(reinterpret_cast<void*>(a.ptr));
    if (q.error != 0 || !q.device_memory)
      throw py::value_error(std::string(name) +
                            ": expected GPU memory (device or managed), received host or "
                            "unregistered memory");
  }
  return reinterpret_cast<float*>(a.ptr);
}

const float* found_inf_ptr(py::handle h) {
  return h.is_none() ? nullptr : flag_ptr("found_inf", h, false);
}

cuda::StepLayout layout_of(const CheckedList& c, py::handle found_inf, bool stochastic,
                           uint64_t seed, uint64_t offset) {
  cuda::StepLayout lay;
  lay.param = c.dtype;
  lay.state = c.state;
  lay.stochastic = stochastic && is_narrow(c.dtype);
  lay.seed = seed;
  lay.offset = offset;
  lay.found_inf = found_inf_ptr(found_inf);
  return lay;
}


}  // namespace

void bind_cuda_optim(py::module_& m) {
  def_step(
      m, "adam_",
      [](py::handle params, py::handle grads, py::handle exp_avg, py::handle exp_avg_sq,
         py::handle max_exp_avg_sq, int64_t step, double lr, double beta1, double beta2,
         double eps, double weight_decay, double l1, bool amsgrad, bool decoupled,
         bool maximize, bool dry_run, uintptr_t stream, double grad_scale, py::handle found_inf,
         py::handle master, bool stochastic, uint64_t seed, uint64_t offset) {
        const CheckedList c = check_lists(with_master(
            adam_slots(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad), master));
        const auto lay = layout_of(c, found_inf, stochastic, seed, offset);
        const AdamHyper h{lr,       beta1,     beta2,    eps,       weight_decay, l1,
                          amsgrad, decoupled, maximize, grad_scale};
        if (dry_run) return;  // checks only
        require_device();
        py::gil_scoped_release nogil;
        cuda::adam_step(c.dl, lay, h, step, as_stream(stream));
      },
      "Fused Adam/AdamW step over lists of GPU arrays on `stream` (use fusedtrain.ops.adam_).", py::none(),
      py::arg("params"), py::arg("grads"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
      py::arg("max_exp_avg_sq"), py::arg("step"), py::arg("lr"), py::arg("beta1"),
      py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("l1"),
      py::arg("amsgrad"), py::arg("decoupled"), py::arg("maximize"), py::arg("dry_run"),
      py::arg("stream"));

  def_step(
      m, "sgd_",
      [](py::handle params, py::handle grads, py::handle momentum_buffer, int64_t step,
         double lr, double momentum, double dampening, double weight_decay, double l1,
         bool nesterov, bool maximize, bool dry_run, uintptr_t stream, double grad_scale,
         py::handle found_inf, py::handle master, bool stochastic, uint64_t seed,
         uint64_t offset) {
        const CheckedList c =
            check_lists(with_master(sgd_slots(params, grads, momentum_buffer, momentum), master));
        const auto lay = layout_of(c, found_inf, stochastic, seed, offset);
        const SgdHyper h{lr, momentum, dampening, weight_decay, l1, nesterov, maximize, grad_scale};
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::sgd_step(c.dl, lay, h, step, as_stream(stream));
      },
      "Fused SGD step over lists of GPU arrays on `stream` (use fusedtrain.ops.sgd_).", py::none(),
      py::arg("params"), py::arg("grads"), py::arg("momentum_buffer"), py::arg("step"),
      py::arg("lr"), py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"),
      py::arg("l1"), py::arg("nesterov"), py::arg("maximize"), py::arg("dry_run"),
      py::arg("stream"));

  def_step(
      m, "rmsprop_",
      [](py::handle params, py::handle grads, py::handle square_avg, py::handle grad_avg,
         py::handle momentum_buffer, double lr, double alpha, double eps, double weight_decay,
         double momentum, double l1, bool centered, bool maximize, bool dry_run,
         uintptr_t stream, double grad_scale, py::handle found_inf, py::handle master,
         bool stochastic, uint64_t seed, uint64_t offset) {
        const CheckedList c = check_lists(with_master(
            rmsprop_slots(params, grads, square_avg, grad_avg, momentum_buffer, centered, momentum),
            master));
        const auto lay = layout_of(c, found_inf, stochastic, seed, offset);
        const RmspropHyper h{lr, alpha, eps, weight_decay, momentum, l1, centered, maximize,
                             grad_scale};
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::rmsprop_step(c.dl, lay, h, as_stream(stream));
      },
      "Fused RMSProp step over lists of GPU arrays on `stream` (use fusedtrain.ops.rmsprop_).", py::none(),
      py::arg("params"), py::arg("grads"), py::arg("square_avg"), py::arg("grad_avg"),
      py::arg("momentum_buffer"), py::arg("lr"), py::arg("alpha"), py::arg("eps"),
      py::arg("weight_decay"), py::arg("momentum"), py::arg("l1"), py::arg("centered"),
      py::arg("maximize"), py::arg("dry_run"), py::arg("stream"));

  def_step(
      m, "adagrad_",
      [](py::handle params, py::handle grads, py::handle state_sum, int64_t step, double lr,
         double lr_decay, double weight_decay, double eps, double l1, bool maximize,
         bool dry_run, uintptr_t stream, double grad_scale, py::handle found_inf,
         py::handle master, bool stochastic, uint64_t seed, uint64_t offset) {
        const CheckedList c =
            check_lists(with_master(adagrad_slots(params, grads, state_sum), master));
        const auto lay = layout_of(c, found_inf, stochastic, seed, offset);
        const AdagradHyper h{lr, lr_decay, weight_decay, eps, l1, maximize, grad_scale};
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::adagrad_step(c.dl, lay, h, step, as_stream(stream));
      },
      "Fused Adagrad step over lists of GPU arrays on `stream` (use fusedtrain.ops.adagrad_).", py::none(),
      py::arg("params"), py::arg("grads"), py::arg("state_sum"), py::arg("step"), py::arg("lr"),
      py::arg("lr_decay"), py::arg("weight_decay"), py::arg("eps"), py::arg("l1"),
      py::arg("maximize"), py::arg("dry_run"), py::arg("stream"));

  m.def(
      "found_nonfinite_",
      [](py::handle arrays, py::handle out, bool dry_run, uintptr_t stream) {
        const CheckedList c = check_lists({{"arrays", arrays, false}}, false);
        float* flag = flag_ptr("out", out, true);
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::found_nonfinite(c.dl, c.dtype, flag, as_stream(stream));
      },
      py::arg("arrays"), py::arg("out"), py::arg("dry_run"), py::arg("stream"),
      "Sets out (a 1-element float32 GPU array) to 1 when any element of the GPU arrays is\n"
      "inf or NaN, on `stream`, without waiting; leaves it unchanged otherwise.");
}

}  // namespace bind
}  // namespace fusedtrain

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fusedtrain CUDA kernels";
  m.def(
      "device_count", []() { return fusedtrain::cuda::query_devices().count; },
      "Number of CUDA devices usable from this process (0 without a driver).");
  m.def(
      "is_available", []() { return fusedtrain::cuda::query_devices().count > 0; },
      "True when a CUDA driver and at least one device are present.");
  m.def(
      "status",
      []() {
        const auto q = fusedtrain::cuda::query_devices();
        py::dict d;
        d["device_count"] = q.count;
        d["error"] = q.error;
        d["message"] = q.message;
        d["runtime_version"] = fusedtrain::cuda::runtime_version();
        return d;
      },
      "Result of the device query: count, CUDA error code and message, runtime version.");
  fusedtrain::bind::bind_cuda_optim(m);
}

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

#include "bind/cuda_arrays.h"
#include "bind/list_args.h"
#include "cuda/norm_cuda.h"
#include "cuda/optim_cuda.h"
#include "cuda/runtime.h"
#include "fusedtrain/norm_math.h"

namespace py = pybind11;

namespace fusedtrain {
namespace bind __attribute__((visibility("hidden"))) {

namespace {

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


// The optimizer dtypes' typestrs: bfloat16 is '<V2', as torch and ml_dtypes
// export it.
bool dtype_of(std::string_view typestr, cuda::DType& out) {
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

std::string typestr_name(std::string_view typestr) { return dtype_name(typestr); }

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
      for (int k = 0; k < nslots; ++k)
        check_device_memory(item_name(slots[k], i), sc.ptr[size_t(i) * nslots + k], device);
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

  m.def(
      "null_step_",
      [](py::handle written, py::handle read, uintptr_t stream) {
        const std::vector<SlotArg> slots = null_step_slots(written, read);
        const int nw = int(slots.size()) - 1;
        const CheckedList c = plain_only(check_lists(slots, false), "written");
        require_device();
        py::gil_scoped_release nogil;
        cuda::null_step(c.dl, c.dtype, int(nw), as_stream(stream));
      },
      py::arg("written"), py::arg("read"), py::arg("stream"),
      "Benchmark memory ceiling on the GPU: the traffic of an optimizer step with trivial\n"
      "math (as _core.null_step_). Each list in `written` is updated in place; `read` is read only.");
}

void bind_cuda_loss(py::module_& m);  // bind/cuda_loss_bind.cpp
// Gradient clipping on GPU arrays (use fusedtrain.ops.global_norm,
// clip_grad_norm_ and clip_grad_value_); the lists are checked as the
// optimizer steps check theirs, `out` / `total_norm` is one float64 GPU
// element. Each entry point ends with `stream`.
namespace {

double* device_double(std::string_view name, py::handle h, bool writable) {
  DevArray a;
  parse(name, h, "a GPU array (an object with __cuda_array_interface__)", a);
  if (a.typestr != "<f8" || a.numel != 1)
    throw py::type_error(name + ": expected one float64 element, received dtype " +
                         dtype_name(a.typestr) + " shape " + shape_str(a));
  if (writable && a.readonly)
    throw py::value_error(name + ": expected a writable array, received a read-only array");
  return reinterpret_cast<double*>(a.ptr);
}

}  // namespace

void bind_cuda_norm(py::module_& m) {
  m.def(
      "global_norm",
      [](py::handle grads, double norm_type, py::handle out, uintptr_t stream) {
        const CheckedList c = plain_only(check_lists({{"grads", grads, false}}, false), "grads");
        norm_kind(norm_type);  // raises for a bad norm type before any launch
        double* o = device_double("out", out, true);
        require_device();
        py::gil_scoped_release nogil;
        cuda::global_norm(c.dl, c.dtype, norm_type, o, as_stream(stream));
      },
      py::arg("grads"), py::arg("norm_type"), py::arg("out"), py::arg("stream"),
      "out = the norm_type-norm of all elements of a list of GPU arrays (float64, fixed order).");
  m.def(
      "clip_by_norm_",
      [](py::handle grads, py::handle total_norm, double max_norm, bool dry_run,
         uintptr_t stream) {
        const CheckedList c = plain_only(check_lists({{"grads", grads, true}}, false), "grads");
        const double* t = device_double("total_norm", total_norm, false);
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::clip_by_norm(c.dl, c.dtype, t, max_norm, as_stream(stream));
      },
      py::arg("grads"), py::arg("total_norm"), py::arg("max_norm"), py::arg("dry_run"),
      py::arg("stream"),
      "x *= min(max_norm / (total_norm + 1e-6), 1), the norm read on the device, in place.");
  m.def(
      "scale_",
      [](py::handle grads, double coef, bool dry_run, uintptr_t stream) {
        const CheckedList c = plain_only(check_lists({{"grads", grads, true}}, false), "grads");
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::scale(c.dl, c.dtype, coef, as_stream(stream));
      },
      py::arg("grads"), py::arg("coef"), py::arg("dry_run"), py::arg("stream"),
      "x *= coef for every element of a list of GPU arrays, in place.");
  m.def(
      "clamp_",
      [](py::handle grads, double lo, double hi, bool dry_run, uintptr_t stream) {
        const CheckedList c = plain_only(check_lists({{"grads", grads, true}}, false), "grads");
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::clamp(c.dl, c.dtype, lo, hi, as_stream(stream));
      },
      py::arg("grads"), py::arg("lo"), py::arg("hi"), py::arg("dry_run"), py::arg("stream"),
      "x = clamp(x, lo, hi) for every element of a list of GPU arrays, in place.");
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
  fusedtrain::bind::bind_cuda_loss(m);
  fusedtrain::bind::bind_cuda_norm(m);
}

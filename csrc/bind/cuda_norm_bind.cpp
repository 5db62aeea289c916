// _cuda bindings of gradient clipping on GPU arrays, the GPU twins of
// bind/norm_bind.cpp (use fusedtrain.ops.global_norm, clip_grad_norm_ and
// clip_grad_value_). The lists are checked as the optimizer steps check
// theirs (bind/cuda_tensor_list.h); `out` / `total_norm` is one float64 GPU
// element. Each entry point ends with `stream`.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bind/cuda_arrays.h"
#include "bind/cuda_tensor_list.h"
#include "cuda/norm_cuda.h"
#include "fusedtrain/norm_math.h"

namespace py = pybind11;

namespace fusedtrain::bind {

namespace {

CheckedList check_grads(py::handle grads, bool writable) {
  return plain_only(check_gpu_lists({{"grads", grads, writable}}, false), "grads");
}

}  // namespace

void bind_cuda_norm(py::module_& m) {
  m.def(
      "global_norm",
      [](py::handle grads, double norm_type, py::handle out, uintptr_t stream) {
        const CheckedList c = check_grads(grads, false);
        norm_kind(norm_type);  // raises for a bad norm type before any launch
        double* o = device_double("out", out, true);
        require_device();
        py::gil_scoped_release nogil;
        cuda::global_norm(c.tl, c.dtype, norm_type, o, as_stream(stream));
      },
      py::arg("grads"), py::arg("norm_type"), py::arg("out"), py::arg("stream"),
      "out = the norm_type-norm of all elements of a list of GPU arrays (float64, fixed order).");
  m.def(
      "clip_by_norm_",
      [](py::handle grads, py::handle total_norm, double max_norm, bool dry_run,
         uintptr_t stream) {
        const CheckedList c = check_grads(grads, true);
        const double* t = device_double("total_norm", total_norm, false);
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::clip_by_norm(c.tl, c.dtype, t, max_norm, as_stream(stream));
      },
      py::arg("grads"), py::arg("total_norm"), py::arg("max_norm"), py::arg("dry_run"),
      py::arg("stream"),
      "x *= min(max_norm / (total_norm + 1e-6), 1), the norm read on the device, in place.");
  m.def(
      "scale_",
      [](py::handle grads, double coef, bool dry_run, uintptr_t stream) {
        const CheckedList c = check_grads(grads, true);
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::scale(c.tl, c.dtype, coef, as_stream(stream));
      },
      py::arg("grads"), py::arg("coef"), py::arg("dry_run"), py::arg("stream"),
      "x *= coef for every element of a list of GPU arrays, in place.");
  m.def(
      "clamp_",
      [](py::handle grads, double lo, double hi, bool dry_run, uintptr_t stream) {
        const CheckedList c = check_grads(grads, true);
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::clamp(c.tl, c.dtype, lo, hi, as_stream(stream));
      },
      py::arg("grads"), py::arg("lo"), py::arg("hi"), py::arg("dry_run"), py::arg("stream"),
      "x = clamp(x, lo, hi) for every element of a list of GPU arrays, in place.");
}

}  // namespace fusedtrain::bind

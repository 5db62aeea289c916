// Bindings of gradient clipping on the CPU: the global norm of a list of
// arrays and the in-place scale and clamp (use fusedtrain.ops.global_norm,
// clip_grad_norm_ and clip_grad_value_). The arrays are validated here as the
// optimizer steps validate theirs (bind/tensor_list.h); numbers arrive
// validated from Python. Validation needs the GIL, so each binding releases
// it itself right before the kernel.
#include <pybind11/pybind11.h>

#include <cmath>

#include "bind/tensor_list.h"
#include "cpu/norm_cpu.h"
#include "fusedtrain/norm_math.h"

namespace py = pybind11;

namespace fusedtrain::bind {

namespace {

CheckedList check_grads(py::handle grads, bool writable) {
  return plain_only(check_lists({{"grads", grads, writable}}, false), "grads");
}

}  // namespace

void bind_norm(py::module_& m) {
  m.def(
      "global_norm",
      [](py::handle grads, double norm_type) {
        const CheckedList c = check_grads(grads, false);
        norm_kind(norm_type);  // raises for a bad norm type before any work
        py::gil_scoped_release nogil;
        return cpu::global_norm(c.tl, c.dtype, norm_type);
      },
      py::arg("grads"), py::arg("norm_type"),
      "The norm_type-norm of all elements of a list of arrays, accumulated in float64 in a\n"
      "fixed order (use fusedtrain.ops.global_norm).");

  m.def(
      "clip_grad_norm_",
      [](py::handle grads, double max_norm, double norm_type, bool error_if_nonfinite) {
        const CheckedList c = check_grads(grads, true);
        norm_kind(norm_type);
        py::gil_scoped_release nogil;
        const double total = cpu::global_norm(c.tl, c.dtype, norm_type);
        if (error_if_nonfinite && !std::isfinite(total)) return total;  // the caller raises
        const double coef = c.dtype == cpu::DType::F32 ? double(clip_coef<float>(total, max_norm))
                                                       : clip_coef<double>(total, max_norm);
        if (coef != 1.0) cpu::scale(c.tl, c.dtype, coef);  // x * 1 is x: skip; NaN scales
        return total;
      },
      py::arg("grads"), py::arg("max_norm"), py::arg("norm_type"), py::arg("error_if_nonfinite"),
      "Scales a list of arrays in place by min(max_norm / (norm + 1e-6), 1) (the coefficient in\n"
      "their dtype, as torch computes it) and returns the norm; with error_if_nonfinite a\n"
      "non-finite norm is returned with nothing scaled (use fusedtrain.ops.clip_grad_norm_).");

  m.def(
      "scale_",
      [](py::handle grads, double coef, bool dry_run) {
        const CheckedList c = check_grads(grads, true);
        if (dry_run) return;
        py::gil_scoped_release nogil;
        cpu::scale(c.tl, c.dtype, coef);
      },
      py::arg("grads"), py::arg("coef"), py::arg("dry_run") = false,
      "x *= coef for every element of a list of arrays, in place (coef in their dtype).");

  m.def(
      "clamp_",
      [](py::handle grads, double lo, double hi, bool dry_run) {
        const CheckedList c = check_grads(grads, true);
        if (dry_run) return;
        py::gil_scoped_release nogil;
        cpu::clamp(c.tl, c.dtype, lo, hi);
      },
      py::arg("grads"), py::arg("lo"), py::arg("hi"), py::arg("dry_run") = false,
      "x = clamp(x, lo, hi) for every element of a list of arrays, in place; NaN stays NaN.");
}

}  // namespace fusedtrain::bind

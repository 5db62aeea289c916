// Bindings of the fused optimizer steps. Hyperparameters arrive validated
// from fusedtrain.ops; the arrays are validated here (bind/tensor_list.h).
// Validation needs the GIL, so each binding releases it itself right before
// the kernel instead of using call_guard.
#include <pybind11/pybind11.h>

#include "bind/tensor_list.h"
#include "cpu/optim_cpu.h"

namespace py = pybind11;

namespace fusedtrain::bind {

void bind_optim(py::module_& m) {
  using cpu::DType;

  m.def(
      "adam_",
      [](py::handle params, py::handle grads, py::handle exp_avg, py::handle exp_avg_sq,
         py::handle max_exp_avg_sq, int64_t step, double lr, double beta1, double beta2,
         double eps, double weight_decay, double l1, bool amsgrad, bool decoupled,
         bool maximize, bool dry_run) {
        const CheckedList c =
            check_lists(adam_slots(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad));
        const AdamHyper h{lr, beta1, beta2, eps, weight_decay, l1, amsgrad, decoupled, maximize};
        if (dry_run) return;  // checks only
        py::gil_scoped_release nogil;
        cpu::adam_step(c.tl, c.dtype, h, step);
      },
      "Fused Adam/AdamW step over lists of arrays (use fusedtrain.ops.adam_).");

  m.def(
      "sgd_",
      [](py::handle params, py::handle grads, py::handle momentum_buffer, int64_t step,
         double lr, double momentum, double dampening, double weight_decay, double l1,
         bool nesterov, bool maximize, bool dry_run) {
        const CheckedList c = check_lists(sgd_slots(params, grads, momentum_buffer, momentum));
        const SgdHyper h{lr, momentum, dampening, weight_decay, l1, nesterov, maximize};
        if (dry_run) return;
        py::gil_scoped_release nogil;
        cpu::sgd_step(c.tl, c.dtype, h, step);
      },
      "Fused SGD step over lists of arrays (use fusedtrain.ops.sgd_).");

  m.def(
      "rmsprop_",
      [](py::handle params, py::handle grads, py::handle square_avg, py::handle grad_avg,
         py::handle momentum_buffer, double lr, double alpha, double eps, double weight_decay,
         double momentum, double l1, bool centered, bool maximize, bool dry_run) {
        const CheckedList c = check_lists(
            rmsprop_slots(params, grads, square_avg, grad_avg, momentum_buffer, centered, momentum));
        const RmspropHyper h{lr, alpha, eps, weight_decay, momentum, l1, centered, maximize};
        if (dry_run) return;
        py::gil_scoped_release nogil;
        cpu::rmsprop_step(c.tl, c.dtype, h);
      },
      "Fused RMSProp step over lists of arrays (use fusedtrain.ops.rmsprop_).");

  m.def(
      "adagrad_",
      [](py::handle params, py::handle grads, py::handle state_sum, int64_t step, double lr,
         double lr_decay, double weight_decay, double eps, double l1, bool maximize,
         bool dry_run) {
        const CheckedList c = check_lists(adagrad_slots(params, grads, state_sum));
        const AdagradHyper h{lr, lr_decay, weight_decay, eps, l1, maximize};
        if (dry_run) return;
        py::gil_scoped_release nogil;
        cpu::adagrad_step(c.tl, c.dtype, h, step);
      },
      "Fused Adagrad step over lists of arrays (use fusedtrain.ops.adagrad_).");

  m.def(
      "null_step_",
      [](py::handle written, py::handle read) {
        const std::vector<SlotArg> slots = null_step_slots(written, read);
        const int nw = int(slots.size()) - 1;
        const CheckedList c = check_lists(slots);
        py::gil_scoped_release nogil;
        cpu::null_step(c.tl, c.dtype, int(nw));
      },
      py::arg("written"), py::arg("read"),
      "Benchmark memory ceiling: the traffic of an optimizer step with trivial math.\n"
      "Each list in `written` is read and updated in place; `read` is read only.");
}

}  // namespace fusedtrain::bind

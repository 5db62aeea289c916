// Bindings of the fused optimizer steps. Hyperparameters arrive validated
// from fusedtrain.ops; the arrays are validated here (bind/tensor_list.h).
// Validation needs the GIL, so each binding releases it itself right before
// the kernel instead of using call_guard. The benchmarks' null steps:
// bind/bench_bind.cpp.
//
// Every step takes, after the positional arguments (ending with dry_run):
//   grad_scale           the gradients are multiplied by 1 / grad_scale
//   found_inf            when true, the step is skipped after the checks
//                        (fusedtrain.ops reads a found_inf array on the host)
//   master_params        float32 master weights of float16 / bfloat16 params
//   stochastic_rounding  round the narrow params stochastically ...
//   seed, rng_offset     ... with the Philox stream (seed, rng_offset)
#include <pybind11/pybind11.h>

#include "bind/tensor_list.h"
#include "cpu/optim_cpu.h"

namespace py = pybind11;

namespace fusedtrain::bind {

void bind_optim(py::module_& m) {
  def_step(
      m, "adam_",
      [](py::handle params, py::handle grads, py::handle exp_avg, py::handle exp_avg_sq,
         py::handle max_exp_avg_sq, int64_t step, double lr, double beta1, double beta2,
         double eps, double weight_decay, double l1, bool amsgrad, bool decoupled,
         bool maximize, bool dry_run, double grad_scale, bool found_inf, py::handle master,
         bool stochastic, uint64_t seed, uint64_t offset) {
        const CheckedList c = check_lists(with_master(
            adam_slots(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad), master));
        const AdamHyper h{lr,       beta1,     beta2,    eps,       weight_decay, l1,
                          amsgrad, decoupled, maximize, grad_scale};
        if (dry_run || found_inf) return;  // checks only
        const auto lay = step_layout(c, stochastic, seed, offset);
        py::gil_scoped_release nogil;
        cpu::adam_step(c.tl, lay, h, step);
      },
      "Fused Adam/AdamW step over lists of arrays (use fusedtrain.ops.adam_).", py::bool_(false),
      py::arg("params"), py::arg("grads"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
      py::arg("max_exp_avg_sq"), py::arg("step"), py::arg("lr"), py::arg("beta1"),
      py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("l1"),
      py::arg("amsgrad"), py::arg("decoupled"), py::arg("maximize"), py::arg("dry_run"));

  def_step(
      m, "sgd_",
      [](py::handle params, py::handle grads, py::handle momentum_buffer, int64_t step,
         double lr, double momentum, double dampening, double weight_decay, double l1,
         bool nesterov, bool maximize, bool dry_run, double grad_scale, bool found_inf,
         py::handle master, bool stochastic, uint64_t seed, uint64_t offset) {
        const CheckedList c =
            check_lists(with_master(sgd_slots(params, grads, momentum_buffer, momentum), master));
        const SgdHyper h{lr, momentum, dampening, weight_decay, l1, nesterov, maximize, grad_scale};
        if (dry_run || found_inf) return;
        const auto lay = step_layout(c, stochastic, seed, offset);
        py::gil_scoped_release nogil;
        cpu::sgd_step(c.tl, lay, h, step);
      },
      "Fused SGD step over lists of arrays (use fusedtrain.ops.sgd_).", py::bool_(false),
      py::arg("params"), py::arg("grads"), py::arg("momentum_buffer"), py::arg("step"), py::arg("lr"),
      py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"), py::arg("l1"),
      py::arg("nesterov"), py::arg("maximize"), py::arg("dry_run"));

  def_step(
      m, "rmsprop_",
      [](py::handle params, py::handle grads, py::handle square_avg, py::handle grad_avg,
         py::handle momentum_buffer, double lr, double alpha, double eps, double weight_decay,
         double momentum, double l1, bool centered, bool maximize, bool dry_run,
         double grad_scale, bool found_inf, py::handle master, bool stochastic, uint64_t seed,
         uint64_t offset) {
        const CheckedList c = check_lists(with_master(
            rmsprop_slots(params, grads, square_avg, grad_avg, momentum_buffer, centered, momentum),
            master));
        const RmspropHyper h{lr, alpha, eps, weight_decay, momentum, l1, centered, maximize,
                             grad_scale};
        if (dry_run || found_inf) return;
        const auto lay = step_layout(c, stochastic, seed, offset);
        py::gil_scoped_release nogil;
        cpu::rmsprop_step(c.tl, lay, h);
      },
      "Fused RMSProp step over lists of arrays (use fusedtrain.ops.rmsprop_).", py::bool_(false),
      py::arg("params"), py::arg("grads"), py::arg("square_avg"), py::arg("grad_avg"),
      py::arg("momentum_buffer"), py::arg("lr"), py::arg("alpha"), py::arg("eps"),
      py::arg("weight_decay"), py::arg("momentum"), py::arg("l1"), py::arg("centered"),
      py::arg("maximize"), py::arg("dry_run"));

  def_step(
      m, "adagrad_",
      [](py::handle params, py::handle grads, py::handle state_sum, int64_t step, double lr,
         double lr_decay, double weight_decay, double eps, double l1, bool maximize,
         bool dry_run, double grad_scale, bool found_inf, py::handle master, bool stochastic,
         uint64_t seed, uint64_t offset) {
        const CheckedList c =
            check_lists(with_master(adagrad_slots(params, grads, state_sum), master));
        const AdagradHyper h{lr, lr_decay, weight_decay, eps, l1, maximize, grad_scale};
        if (dry_run || found_inf) return;
        const auto lay = step_layout(c, stochastic, seed, offset);
        py::gil_scoped_release nogil;
        cpu::adagrad_step(c.tl, lay, h, step);
      },
      "Fused Adagrad step over lists of arrays (use fusedtrain.ops.adagrad_).", py::bool_(false),
      py::arg("params"), py::arg("grads"), py::arg("state_sum"), py::arg("step"), py::arg("lr"),
      py::arg("lr_decay"), py::arg("weight_decay"), py::arg("eps"), py::arg("l1"),
      py::arg("maximize"), py::arg("dry_run"));

  m.def(
      "found_nonfinite",
      [](py::handle arrays) {
        const CheckedList c = check_lists({{"arrays", arrays, false}}, false);
        py::gil_scoped_release nogil;
        return cpu::any_nonfinite(c.tl, c.dtype);
      },
      py::arg("arrays"),
      "True when any element of the arrays (a list of arrays of one dtype: float32, float64,\n"
      "float16 or bfloat16) is inf or NaN: one parallel pass over the exponent bits.");
}

}  // namespace fusedtrain::bind

// _cuda bindings of the fused optimizer steps and the non-finite check, the
// GPU twins of bind/optim_bind.cpp. They take the positional arguments of
// _core's (ending with dry_run) plus a trailing `stream`: the cudaStream_t to
// launch on, as an integer (0: the legacy default stream). Arrays are any
// objects exposing __cuda_array_interface__ (CuPy arrays, torch CUDA
// tensors), validated exactly as the CPU path validates NumPy arrays, with the
// same messages, before anything is launched (bind/cuda_tensor_list.h);
// dry_run=True runs nothing else. found_inf is None or a 1-element float32
// GPU array, read inside the kernels. The benchmarks' null step:
// bind/cuda_bench_bind.cpp.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bind/cuda_arrays.h"
#include "bind/cuda_tensor_list.h"
#include "cuda/optim_cuda.h"

namespace py = pybind11;

namespace fusedtrain::bind {

void bind_cuda_optim(py::module_& m) {
  def_step(
      m, "adam_",
      [](py::handle params, py::handle grads, py::handle exp_avg, py::handle exp_avg_sq,
         py::handle max_exp_avg_sq, int64_t step, double lr, double beta1, double beta2,
         double eps, double weight_decay, double l1, bool amsgrad, bool decoupled,
         bool maximize, bool dry_run, uintptr_t stream, double grad_scale, py::handle found_inf,
         py::handle master, bool stochastic, uint64_t seed, uint64_t offset) {
        const CheckedList c = check_gpu_lists(with_master(
            adam_slots(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, amsgrad), master));
        const auto lay = gpu_step_layout(c, found_inf, stochastic, seed, offset);
        const AdamHyper h{lr,       beta1,     beta2,    eps,       weight_decay, l1,
                          amsgrad, decoupled, maximize, grad_scale};
        if (dry_run) return;  // checks only
        require_device();
        py::gil_scoped_release nogil;
        cuda::adam_step(c.tl, lay, h, step, as_stream(stream));
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
            check_gpu_lists(with_master(sgd_slots(params, grads, momentum_buffer, momentum), master));
        const auto lay = gpu_step_layout(c, found_inf, stochastic, seed, offset);
        const SgdHyper h{lr, momentum, dampening, weight_decay, l1, nesterov, maximize, grad_scale};
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::sgd_step(c.tl, lay, h, step, as_stream(stream));
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
        const CheckedList c = check_gpu_lists(with_master(
            rmsprop_slots(params, grads, square_avg, grad_avg, momentum_buffer, centered, momentum),
            master));
        const auto lay = gpu_step_layout(c, found_inf, stochastic, seed, offset);
        const RmspropHyper h{lr, alpha, eps, weight_decay, momentum, l1, centered, maximize,
                             grad_scale};
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::rmsprop_step(c.tl, lay, h, as_stream(stream));
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
            check_gpu_lists(with_master(adagrad_slots(params, grads, state_sum), master));
        const auto lay = gpu_step_layout(c, found_inf, stochastic, seed, offset);
        const AdagradHyper h{lr, lr_decay, weight_decay, eps, l1, maximize, grad_scale};
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::adagrad_step(c.tl, lay, h, step, as_stream(stream));
      },
      "Fused Adagrad step over lists of GPU arrays on `stream` (use fusedtrain.ops.adagrad_).", py::none(),
      py::arg("params"), py::arg("grads"), py::arg("state_sum"), py::arg("step"), py::arg("lr"),
      py::arg("lr_decay"), py::arg("weight_decay"), py::arg("eps"), py::arg("l1"),
      py::arg("maximize"), py::arg("dry_run"), py::arg("stream"));

  m.def(
      "found_nonfinite_",
      [](py::handle arrays, py::handle out, bool dry_run, uintptr_t stream) {
        const CheckedList c = check_gpu_lists({{"arrays", arrays, false}}, false);
        float* flag = flag_ptr("out", out, true);
        if (dry_run) return;
        require_device();
        py::gil_scoped_release nogil;
        cuda::found_nonfinite(c.tl, c.dtype, flag, as_stream(stream));
      },
      py::arg("arrays"), py::arg("out"), py::arg("dry_run"), py::arg("stream"),
      "Sets out (a 1-element float32 GPU array) to 1 when any element of the GPU arrays is\n"
      "inf or NaN, on `stream`, without waiting; leaves it unchanged otherwise.");
}

}  // namespace fusedtrain::bind

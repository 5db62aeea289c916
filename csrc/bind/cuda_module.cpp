// _cuda: the CUDA side of fusedtrain. Imports on machines without a GPU or a
// CUDA runtime (cudart is linked statically); is_available() answers False.
// The module definition and the device queries; the entry points are bound
// by family, as _core's are: optimizer steps (bind/cuda_optim_bind.cpp),
// losses and dropout (bind/cuda_loss_bind.cpp), clipping
// (bind/cuda_norm_bind.cpp), and apart from them the benchmarks' null step
// (bind/cuda_bench_bind.cpp). The lists of GPU arrays are checked in
// bind/cuda_tensor_list.cpp.
#include <pybind11/pybind11.h>

#include "cuda/runtime.h"

namespace py = pybind11;

namespace fusedtrain::bind {
void bind_cuda_optim(py::module_& m);
void bind_cuda_loss(py::module_& m);
void bind_cuda_normalize(py::module_& m);
void bind_cuda_norm(py::module_& m);
void bind_cuda_bench(py::module_& m);  // benchmark-only kernels
}  // namespace fusedtrain::bind

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
  fusedtrain::bind::bind_cuda_normalize(m);
  fusedtrain::bind::bind_cuda_norm(m);
  fusedtrain::bind::bind_cuda_bench(m);
}

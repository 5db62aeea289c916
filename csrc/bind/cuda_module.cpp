// _cuda: the CUDA side of fusedtrain. Imports on machines without a GPU or a
// CUDA runtime (cudart is linked statically); is_available() answers False.
#include <pybind11/pybind11.h>

#include "cuda/runtime.h"

namespace py = pybind11;

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
}

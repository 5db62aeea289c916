// _cuda binding of the benchmark-only kernel (cuda/bench_cuda.h): the memory
// ceiling bench/ measures the GPU optimizer steps against. Not part of the
// product API; the lists are checked as the steps check theirs.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include "bind/cuda_arrays.h"
#include "bind/cuda_tensor_list.h"
#include "cuda/bench_cuda.h"

namespace py = pybind11;

namespace fusedtrain::bind {

void bind_cuda_bench(py::module_& m) {
  m.def(
      "null_step_",
      [](py::handle written, py::handle read, uintptr_t stream) {
        const std::vector<SlotArg> slots = null_step_slots(written, read);
        const int nw = int(slots.size()) - 1;
        const CheckedList c = plain_only(check_gpu_lists(slots, false), "written");
        require_device();
        py::gil_scoped_release nogil;
        cuda::null_step(c.tl, c.dtype, int(nw), as_stream(stream));
      },
      py::arg("written"), py::arg("read"), py::arg("stream"),
      "Benchmark memory ceiling on the GPU: the traffic of an optimizer step with trivial\n"
      "math (as _core.null_step_). Each list in `written` is updated in place; `read` is read only.");
}

}  // namespace fusedtrain::bind

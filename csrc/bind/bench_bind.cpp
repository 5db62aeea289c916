// Bindings of the benchmark-only kernels (cpu/bench_cpu.h): the memory
// ceilings bench/ measures the optimizer steps against. Not part of the
// product API; the lists are checked as the steps check theirs.
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bind/tensor_list.h"
#include "cpu/bench_cpu.h"

namespace py = pybind11;

namespace fusedtrain::bind {

void bind_bench(py::module_& m) {
  m.def(
      "null_step_",
      [](py::handle written, py::handle read) {
        const std::vector<SlotArg> slots = null_step_slots(written, read);
        const int nw = int(slots.size()) - 1;
        const CheckedList c = plain_only(check_lists(slots, false), "written");
        py::gil_scoped_release nogil;
        cpu::null_step(c.tl, c.dtype, int(nw));
      },
      py::arg("written"), py::arg("read"),
      "Benchmark memory ceiling: the traffic of an optimizer step with trivial math.\n"
      "Each list in `written` is read and updated in place; `read` is read only.");

  m.def(
      "null_mixed_step_",
      [](py::handle params, py::handle grads, py::handle written) {
        const py::ssize_t nw = py::len(written);
        if (nw < 1 || nw > 3)
          throw py::value_error("written: expected 1 to 3 lists of float32 arrays, received " +
                                std::to_string(nw));
        static const char* names[] = {"written[0]", "written[1]", "written[2]"};
        std::vector<SlotArg> slots = {{"params", params, true}, {"grads", grads, false}};
        for (py::ssize_t k = 0; k < nw; ++k)
          slots.push_back({names[k], written[py::int_(k)], true, Role::Master});
        const CheckedList c = check_lists(slots, false);
        if (c.dtype != DType::BF16)
          throw py::type_error(std::string("params[0]: expected dtype bfloat16, received ") +
                               dtype_name(c.dtype));
        py::gil_scoped_release nogil;
        cpu::null_mixed_step(c.tl, int(nw));
      },
      py::arg("params"), py::arg("grads"), py::arg("written"),
      "Benchmark memory ceiling of a mixed-precision step: bfloat16 `params` written,\n"
      "bfloat16 `grads` read, each float32 list in `written` read and updated in place.");
}

}  // namespace fusedtrain::bind

// Bindings of the loss and dropout kernels.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace fusedtrain::bind {

void bind_loss(py::module_& m) { (void)m; }

}  // namespace fusedtrain::bind

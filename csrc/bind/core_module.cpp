// _core: the CPU kernels of fusedtrain.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <string>

#include "cpu/blas.h"
#include "cpu/optim_cpu.h"
#include "cpu/parallel.h"

namespace py = pybind11;

namespace fusedtrain::bind {
void bind_optim(py::module_& m);
void bind_chunks(py::module_& m);
void bind_dense(py::module_& m);
void bind_loss(py::module_& m);
void bind_norm(py::module_& m);
}

#ifndef FT_CXX_COMPILER
#define FT_CXX_COMPILER "unknown"
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedtrain CPU kernels (C++, OpenMP, runtime SIMD dispatch)";
  fusedtrain::cpu::use_serial_blas();

  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1)
          throw py::value_error("n: expected a thread count >= 1, received " + std::to_string(n));
        fusedtrain::cpu::set_num_threads(n);
      },
      py::arg("n"), "Set the number of threads the kernels use.");
  m.def("get_num_threads", &fusedtrain::cpu::num_threads,
        "Number of threads the kernels use.");
  m.def("set_flush_denormal", &fusedtrain::cpu::set_flush_denormal, py::arg("on"),
        "Flush subnormal numbers to zero in the optimizer loops (default off).");
  m.def("get_flush_denormal", &fusedtrain::cpu::flush_denormal);
  m.def("build_info", []() {
    py::dict d;
    d["simd"] = fusedtrain::cpu::simd_level();
    d["num_threads"] = fusedtrain::cpu::num_threads();
    d["flush_denormal"] = fusedtrain::cpu::flush_denormal();
    d["openmp"] = int(_OPENMP);
    d["compiler"] = FT_CXX_COMPILER;
    d["blas"] = std::string(scipy_openblas_get_config());
    d["blas_threads"] = scipy_openblas_get_num_threads();
    return d;
  });

  fusedtrain::bind::bind_optim(m);
  fusedtrain::bind::bind_chunks(m);
  fusedtrain::bind::bind_dense(m);
  fusedtrain::bind::bind_loss(m);
  fusedtrain::bind::bind_norm(m);
}

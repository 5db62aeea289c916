// _core: the CPU kernels of fusedtrain.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <string>

#include "cpu/blas.h"
#include "cpu/loss_cpu.h"
#include "cpu/lowp_cpu.h"
#include "cpu/optim_cpu.h"
#include "cpu/philox_cpu.h"
#include "cpu/parallel.h"

namespace py = pybind11;

namespace fusedtrain::bind {
void bind_optim(py::module_& m);
void bind_chunks(py::module_& m);
void bind_dense(py::module_& m);
void bind_loss(py::module_& m);
void bind_norm(py::module_& m);
void bind_normalize(py::module_& m);
void bind_gather(py::module_& m);
void bind_bench(py::module_& m);  // benchmark-only kernels (bind/bench_bind.cpp)
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
    d["narrow_bf16"] = fusedtrain::cpu::narrow_path_bf16();
    d["narrow_half"] = fusedtrain::cpu::narrow_path_half();
    d["widen_half"] = fusedtrain::cpu::widen_path_half();
    d["philox"] = fusedtrain::cpu::philox_path();
    return d;
  });

  m.def(
      "_lowp_selfcheck",
      [](const std::string& dtype, int64_t stride) {
        if (dtype != "bfloat16" && dtype != "float16")
          throw py::value_error("dtype: expected 'bfloat16' or 'float16', received '" + dtype +
                                "'");
        if (stride < 1)
          throw py::value_error("stride: expected >= 1, received " + std::to_string(stride));
        py::gil_scoped_release release;
        const bool bf16 = dtype == "bfloat16";
        return fusedtrain::cpu::narrow_selfcheck(bf16, stride) +
               (bf16 ? 0 : fusedtrain::cpu::widen_selfcheck());
      },
      py::arg("dtype"), py::arg("stride") = 1,
      "Number of float32 bit patterns (every stride-th of the 2^32) that the "
      "float16/bfloat16 rounding paths this CPU can run convert otherwise than "
      "the portable conversion, plus (float16) the float16 bit patterns its "
      "widening paths widen otherwise (0 when they all agree).");

  m.def(
      "_philox_selfcheck", []() { return fusedtrain::cpu::philox_selfcheck(); },
      "Number of Philox words that the paths this CPU can run give otherwise "
      "than the portable generator, on runs of blocks at several starts, seeds "
      "and offsets (0 when they all agree).");

  m.def(
      "_exp_selfcheck",
      [](int64_t stride64) {
        if (stride64 < 1)
          throw py::value_error("stride64: expected >= 1, received " + std::to_string(stride64));
        py::gil_scoped_release release;
        return fusedtrain::cpu::exp_selfcheck(stride64);
      },
      py::arg("stride64") = int64_t(1) << 40,
      "Number of inputs x <= 0 or NaN on which the losses' short exponential "
      "(ft_exp_nonpos) differs from the general one (ft_exp_poly): every "
      "float32 one, and float64 ones every stride64-th bit pattern (0 when "
      "they agree).");

  fusedtrain::bind::bind_optim(m);
  fusedtrain::bind::bind_chunks(m);
  fusedtrain::bind::bind_dense(m);
  fusedtrain::bind::bind_loss(m);
  fusedtrain::bind::bind_norm(m);
  fusedtrain::bind::bind_normalize(m);
  fusedtrain::bind::bind_gather(m);
  fusedtrain::bind::bind_bench(m);
}

// Turns Python lists of NumPy arrays into a cpu::TensorList, checking every
// array before any kernel runs: a call that raises has changed nothing.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bind/list_args.h"
#include "cpu/optim_cpu.h"

// hidden like pybind11's own types, which these structs hold
namespace fusedtrain {
namespace bind __attribute__((visibility("hidden"))) {

namespace py = pybind11;

// A validated TensorList plus its dtypes (params and grads; states). The pointer and offset tables live
// in thread-local storage reused across calls (no allocation in steady state),
// so a TensorList is only valid until the next check_lists on the same thread.
struct CheckedList {
  cpu::TensorList tl;
  cpu::DType dtype;
  cpu::DType state = cpu::DType::F32;
};

// Checks that every slot is a non-empty list/tuple of the same length as the
// first one (the params), of C-contiguous aligned arrays with the shape of the
// matching param, writable where the kernel writes, and that no two arrays
// share memory. Dtypes by role (SlotArg::role): params and grads float32 or
// float64 with states of the same dtype, or float16 / bfloat16 with float32
// master weights and float32 or bfloat16 states (check_master, state_dtype).
// Raises TypeError / ValueError naming the argument, the expected and the
// received value.
// `step`: the lists are an optimizer step's (master weights checked against
// the params' dtype); false for a plain list of arrays of one dtype.
CheckedList check_lists(const std::vector<SlotArg>& slots, bool step = true);

}  // namespace bind
}  // namespace fusedtrain

// Turns Python lists of GPU arrays (objects with __cuda_array_interface__)
// into a TensorList, with the checks and messages of the NumPy lists
// (check_lists_with, bind/list_args.h), plus the device-side arguments the
// multi-tensor entry points of _cuda share. The checks read only the
// interface dicts, so they run without a GPU too (on stand-in objects); where
// a GPU is present, every pointer must also be device memory of the current
// device.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string_view>
#include <vector>

#include "bind/list_args.h"

namespace fusedtrain {
namespace bind __attribute__((visibility("hidden"))) {

// check_lists_with over GPU arrays; where a GPU is present, every non-empty
// array must also be device memory on the current device.
CheckedList check_gpu_lists(const std::vector<SlotArg>& slots, bool step = true);

// A 1-element float32 GPU array (found_inf, read inside the kernels; or the
// flag found_nonfinite_ writes): its device pointer, checked to be device
// memory where a GPU is present. `name` names it in messages.
float* flag_ptr(const char* name, py::handle h, bool writable);

// A step's storage layout with its found_inf (None or a flag_ptr array).
StepLayout gpu_step_layout(const CheckedList& c, py::handle found_inf, bool stochastic,
                           uint64_t seed, uint64_t offset);

// One float64 GPU element (a norm's output or input).
double* device_double(std::string_view name, py::handle h, bool writable);

}  // namespace bind
}  // namespace fusedtrain

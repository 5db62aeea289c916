// Turns Python lists of NumPy arrays into a TensorList, checking every array
// before any kernel runs: a call that raises has changed nothing.
#pragma once

#include <pybind11/pybind11.h>

#include <vector>

#include "bind/list_args.h"

namespace fusedtrain {
namespace bind __attribute__((visibility("hidden"))) {

// check_lists_with (bind/list_args.h) over NumPy arrays.
CheckedList check_lists(const std::vector<SlotArg>& slots, bool step = true);

}  // namespace bind
}  // namespace fusedtrain

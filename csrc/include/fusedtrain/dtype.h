// The element types a kernel call can be given, named once for the CPU
// loops, the CUDA kernels and the bindings that pick between them.
#pragma once

namespace fusedtrain {

enum class DType { F32, F64, F16, BF16 };

}  // namespace fusedtrain

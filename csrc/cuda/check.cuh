// FT_CUDA_CHECK(call): a failed CUDA runtime call becomes a std::runtime_error
// (RuntimeError in Python) naming the call, the error and file:line, as
// llm.c's cudaCheck does, but never exiting the process.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace fusedtrain::cuda {

inline void check_cuda(cudaError_t err, const char* call, const char* file, int line) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error: ") + call + " failed with " +
                             cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ") at " +
                             file + ":" + std::to_string(line));
}

}  // namespace fusedtrain::cuda

#define FT_CUDA_CHECK(call) ::fusedtrain::cuda::check_cuda((call), #call, __FILE__, __LINE__)

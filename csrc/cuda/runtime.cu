#include <cuda_runtime.h>

#include "cuda/check.cuh"
#include "cuda/runtime.h"

namespace fusedtrain::cuda {

DeviceQuery query_devices() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return {0, int(err), cudaGetErrorString(err)};
  }
  return {count > 0 ? count : 0, 0, std::string()};
}

int runtime_version() { return CUDART_VERSION; }

PointerQuery query_pointer(const void* p) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess) {
    cudaGetLastError();  // not a sticky error: clear it
    return {int(err), cudaGetErrorString(err), false, -1};
  }
  const bool on_device = attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
  return {0, std::string(), on_device, on_device ? attr.device : -1};
}

int current_device() {
  int device = -1;
  FT_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

}  // namespace fusedtrain::cuda

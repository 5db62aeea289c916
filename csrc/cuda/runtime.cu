#include <cuda_runtime.h>

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

}  // namespace fusedtrain::cuda

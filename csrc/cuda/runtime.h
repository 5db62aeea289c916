// Host-callable CUDA runtime queries, compiled by nvcc, used by the _cuda
// binding (compiled by the host compiler).
#pragma once

#include <string>

namespace fusedtrain::cuda {

struct DeviceQuery {
  int count;          // usable devices; 0 when the query failed
  int error;          // cudaError_t of cudaGetDeviceCount, 0 on success
  std::string message;  // its error string, empty on success
};

// Never throws: without a driver cudaGetDeviceCount fails (error 35,
// insufficient driver) and leaves the count undefined, so the code is checked.
DeviceQuery query_devices();

int runtime_version();  // CUDART_VERSION the module was built against

// Where a pointer lives, from cudaPointerGetAttributes. Never throws.
struct PointerQuery {
  int error;            // cudaError_t of the query, 0 on success
  std::string message;  // its error string, empty on success
  bool device_memory;   // device or managed memory (a kernel may touch it)
  int device;           // the device it belongs to; -1 for host or unknown memory
};
PointerQuery query_pointer(const void* p);

// The calling thread's current device (cudaGetDevice); throws
// std::runtime_error when the query fails.
int current_device();

}  // namespace fusedtrain::cuda

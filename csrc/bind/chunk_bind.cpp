// _core.chunk_table / _core.chunk_limits: the GPU's multi-tensor chunk table
// (fusedtrain/multi_tensor.h), built on the host so that the CPU tests can
// check it: every element covered once, capacities respected, order fixed.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "fusedtrain/multi_tensor.h"

namespace py = pybind11;

namespace fusedtrain::bind {

namespace {

template <int Depth>
py::dict limits_of() {
  using Table = mta::ChunkTable<Depth>;
  py::dict d;
  d["depth"] = Depth;
  d["max_tensors"] = Table::kMaxTensors;
  d["max_blocks"] = mta::kMaxBlocks;
  d["chunk_size"] = mta::kChunkSize;
  d["table_bytes"] = sizeof(Table);
  d["param_limit"] = mta::kKernelParamBytes;
  d["reserved_bytes"] = mta::kReservedParamBytes;
  return d;
}

}  // namespace

void bind_chunks(py::module_& m) {
  m.def(
      "chunk_table",
      [](const std::vector<int64_t>& sizes, int64_t chunk_size, int max_tensors, int max_blocks) {
        py::list launches;
        py::list tensors, blocks;
        mta::plan_launches(
            sizes.data(), int64_t(sizes.size()), chunk_size, max_tensors, max_blocks,
            [&](int slot, int64_t i) {
              if (slot != int(py::len(tensors)))
                throw std::logic_error("chunk_table: slots out of order");  // planner bug
              tensors.append(i);
            },
            [&](int, int slot, int64_t chunk) { blocks.append(py::make_tuple(slot, chunk)); },
            [&](int, int) {
              py::dict launch;
              launch["tensors"] = tensors;
              launch["blocks"] = blocks;
              launches.append(launch);
              tensors = py::list();
              blocks = py::list();
            });
        return launches;
      },
      py::arg("sizes"), py::arg("chunk_size"), py::arg("max_tensors"), py::arg("max_blocks"),
      "The launches of a multi-tensor apply over tensors of `sizes` elements: a list of\n"
      "{'tensors': [tensor index per slot], 'blocks': [(slot, chunk index) per block]}.\n"
      "Chunk c of a tensor covers elements [c * chunk_size, (c + 1) * chunk_size).");

  m.def(
      "chunk_limits",
      [](int depth) -> py::dict {
        switch (depth) {
          case 1: return limits_of<1>();
          case 2: return limits_of<2>();
          case 3: return limits_of<3>();
          case 4: return limits_of<4>();
          case 5: return limits_of<5>();
        }
        throw py::value_error("depth: expected 1 to 5 buffers per tensor, received " +
                              std::to_string(depth));
      },
      py::arg("depth"),
      "Capacities of the GPU chunk table for `depth` buffers per tensor: max_tensors,\n"
      "max_blocks, chunk_size, and its size in bytes against the kernel-parameter limit.");
}

}  // namespace fusedtrain::bind

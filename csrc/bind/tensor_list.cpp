#include "bind/tensor_list.h"

#include "bind/arrays.h"

#include <algorithm>
#include <cstdint>

namespace fusedtrain::bind {

namespace {

struct Interval {
  uintptr_t begin, end;
  int slot;
  int64_t index;
};

struct Scratch {
  std::vector<void*> ptr;
  std::vector<int64_t> offsets;
  std::vector<Interval> intervals;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

std::string item_name(const SlotArg& s, int64_t i) {
  return std::string(s.name) + "[" + std::to_string(i) + "]";
}

bool same_shape(const py::array& a, const py::array& b) {
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) != b.shape(d)) return false;
  return true;
}

py::ssize_t list_length(const SlotArg& s) {
  if (!PyList_Check(s.list.ptr()) && !PyTuple_Check(s.list.ptr()))
    throw py::type_error(std::string(s.name) + ": expected a list or tuple of arrays, received " +
                         type_name(s.list));
  return PySequence_Fast_GET_SIZE(s.list.ptr());
}

}  // namespace

CheckedList check_lists(const std::vector<SlotArg>& slots) {
  const SlotArg& first = slots.front();
  const py::ssize_t n = list_length(first);
  if (n == 0)
    throw py::value_error(std::string(first.name) +
                          ": expected a non-empty list of arrays, received an empty list");
  for (const SlotArg& s : slots) {
    const py::ssize_t len = list_length(s);
    if (len != n)
      throw py::value_error(std::string(s.name) + ": expected " + std::to_string(n) +
                            " arrays (one per parameter), received " + std::to_string(len));
  }

  PyObject** params = PySequence_Fast_ITEMS(first.list.ptr());
  if (!py::isinstance<py::array>(params[0]))
    throw py::type_error(item_name(first, 0) + ": expected a numpy.ndarray, received " +
                         type_name(params[0]));
  const auto p0 = py::reinterpret_borrow<py::array>(params[0]);
  const int num = float_dtype(item_name(first, 0), p0);

  Scratch& sc = scratch();
  const int nslots = int(slots.size());
  sc.ptr.resize(size_t(n) * nslots);
  sc.offsets.resize(size_t(n) + 1);
  sc.intervals.clear();
  sc.offsets[0] = 0;

  for (py::ssize_t i = 0; i < n; ++i) {
    const auto param = py::reinterpret_borrow<py::array>(params[i]);
    for (int k = 0; k < nslots; ++k) {
      const SlotArg& s = slots[k];
      py::handle h = PySequence_Fast_ITEMS(s.list.ptr())[i];
      if (!py::isinstance<py::array>(h))
        throw py::type_error(item_name(s, i) + ": expected a numpy.ndarray, received " +
                             type_name(h));
      const auto a = py::reinterpret_borrow<py::array>(h);
      if (a.dtype().num() != num || !native_order(a))
        same_dtype(item_name(s, i), a, num, "the dtype of " + item_name(first, 0));
      if (k > 0 && !same_shape(a, param))
        throw py::value_error(item_name(s, i) + ": expected shape " + shape_str(param) +
                              " (the shape of " + item_name(first, i) + "), received " +
                              shape_str(a));
      constexpr int kLayout = py::array::c_style | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
      if ((a.flags() & kLayout) != kLayout || (s.writable && !a.writeable()))
        contiguous(item_name(s, i), a, s.writable);  // raises, saying which
      void* data = const_cast<void*>(a.data());
      sc.ptr[size_t(i) * nslots + k] = data;
      const auto nbytes = uintptr_t(a.nbytes());
      if (nbytes > 0)
        sc.intervals.push_back({uintptr_t(data), uintptr_t(data) + nbytes, k, int64_t(i)});
    }
    sc.offsets[i + 1] = sc.offsets[i] + int64_t(param.size());
  }

  // No two buffers may share memory: a parameter aliasing its gradient or a
  // state would be read after it was written within the same element update.
  std::sort(sc.intervals.begin(), sc.intervals.end(),
            [](const Interval& a, const Interval& b) { return a.begin < b.begin; });
  for (size_t j = 1; j < sc.intervals.size(); ++j) {
    const Interval& prev = sc.intervals[j - 1];
    const Interval& cur = sc.intervals[j];
    // sorted by begin: checking each neighbour suffices once the running
    // furthest end is carried along
    if (cur.begin < prev.end) {
      throw py::value_error(item_name(slots[prev.slot], prev.index) + " and " +
                            item_name(slots[cur.slot], cur.index) +
                            ": expected separate arrays, received arrays that share memory");
    }
    if (prev.end > cur.end) sc.intervals[j] = {cur.begin, prev.end, prev.slot, prev.index};
  }

  CheckedList out;
  out.tl.n = n;
  out.tl.slots = nslots;
  out.tl.ptr = sc.ptr.data();
  out.tl.offsets = sc.offsets.data();
  out.dtype = num == f32_num() ? cpu::DType::F32 : cpu::DType::F64;
  return out;
}

}  // namespace fusedtrain::bind

#include "bind/tensor_list.h"

#include "bind/arrays.h"

#include <algorithm>
#include <cstdint>

namespace fusedtrain::bind {

namespace {

struct Scratch {
  std::vector<void*> ptr;
  std::vector<int64_t> offsets;
  std::vector<Interval> intervals;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}


bool same_shape(const py::array& a, const py::array& b) {
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) != b.shape(d)) return false;
  return true;
}


// Raises the descriptive error for slots[k][i], which failed the fast check
// (expected type number `num`, for the reason `why`).
[[noreturn]] void raise_bad_item(const std::vector<SlotArg>& slots, const SlotArg& first,
                                 py::ssize_t i, int k, int num, std::string_view why) {
  const SlotArg& s = slots[k];
  py::handle h = PySequence_Fast_ITEMS(s.list.ptr())[i];
  const py::array a = as_array(item_name(s, i), h);
  same_dtype(item_name(s, i), a, num, why);
  const auto param = py::reinterpret_borrow<py::array>(PySequence_Fast_ITEMS(first.list.ptr())[i]);
  if (!same_shape(a, param))
    throw py::value_error(item_name(s, i) + ": expected shape " + shape_str(param) +
                          " (the shape of " + item_name(first, i) + "), received " +
                          shape_str(a));
  contiguous(item_name(s, i), a, s.writable);
  throw py::value_error(item_name(s, i) + ": rejected");  // unreachable: one check above fails
}

// The optimizer dtype of a NumPy type number, or false.
bool dtype_of(int num, const py::array& a, cpu::DType& out) {
  if (!native_order(a)) return false;
  if (num == f32_num()) out = cpu::DType::F32;
  else if (num == f64_num()) out = cpu::DType::F64;
  else if (num == f16_num()) out = cpu::DType::F16;
  else if (num == bf16_num()) out = cpu::DType::BF16;
  else return false;
  return true;
}

int num_of(cpu::DType d) {
  switch (d) {
    case cpu::DType::F32: return f32_num();
    case cpu::DType::F64: return f64_num();
    case cpu::DType::F16: return f16_num();
    case cpu::DType::BF16: return bf16_num();
  }
  return -1;
}

int64_t itemsize_of(cpu::DType d) {
  return d == cpu::DType::F64 ? 8 : d == cpu::DType::F32 ? 4 : 2;
}

// The dtype slot `s` must have, and why (for messages).
struct Want {
  int num;
  int64_t itemsize;
  std::string why;
};

}  // namespace

CheckedList check_lists(const std::vector<SlotArg>& slots, bool step) {
  const SlotArg& first = slots.front();
  const py::ssize_t n = common_length(slots);

  PyObject** params = PySequence_Fast_ITEMS(first.list.ptr());
  if (!py::isinstance<py::array>(params[0]))
    throw py::type_error(item_name(first, 0) + ": expected a numpy.ndarray, received " +
                         type_name(params[0]));
  const auto p0 = py::reinterpret_borrow<py::array>(params[0]);
  cpu::DType pdt;
  if (!dtype_of(p0.dtype().num(), p0, pdt))
    throw py::type_error(item_name(first, 0) +
                         ": expected dtype float32, float64, float16 or bfloat16, received " +
                         dtype_str(p0));
  if (step) check_master(pdt, find_role(slots, Role::Master) != nullptr);
  cpu::DType sdt = pdt;
  std::string state_why = "the dtype of " + item_name(first, 0);
  if (const SlotArg* st = find_role(slots, Role::State); st != nullptr && is_narrow(pdt)) {
    const std::string name = item_name(*st, 0);
    const py::array a = as_array(name, PySequence_Fast_ITEMS(st->list.ptr())[0]);
    cpu::DType d;
    if (!dtype_of(a.dtype().num(), a, d))
      throw py::type_error(name + ": expected dtype float32 or bfloat16 (optimizer states of " +
                           dtype_name(pdt) + " params), received " + dtype_str(a));
    sdt = state_dtype(pdt, d, name);
    state_why = "the dtype of " + name;
  }

  const int nslots = int(slots.size());
  std::vector<Want> want;
  want.reserve(size_t(nslots));
  for (const SlotArg& s : slots) {
    if (s.role == Role::Master)
      want.push_back({f32_num(), 4, "master weights are float32"});
    else if (s.role == Role::State)
      want.push_back({num_of(sdt), itemsize_of(sdt), state_why});
    else
      want.push_back({num_of(pdt), itemsize_of(pdt), "the dtype of " + item_name(first, 0)});
  }

  Scratch& sc = scratch();
  sc.ptr.resize(size_t(n) * nslots);
  sc.offsets.resize(size_t(n) + 1);
  sc.intervals.clear();
  sc.offsets[0] = 0;

  // Fast path on the raw array structs (no reference counting, no
  // allocation); any mismatch re-checks that array with the descriptive
  // checks of bind/arrays.h, which raise.
  const auto& api = py::detail::npy_api::get();
  constexpr int kFlags = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ |
                         py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  constexpr char kSwapped = (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) ? '>' : '<';
  for (py::ssize_t i = 0; i < n; ++i) {
    const auto* param = py::detail::array_proxy(params[i]);
    for (int k = 0; k < nslots; ++k) {
      const SlotArg& s = slots[k];
      PyObject* h = PySequence_Fast_ITEMS(s.list.ptr())[i];
      bool ok = api.PyArray_Check_(h);
      const auto* a = py::detail::array_proxy(h);
      if (ok) {
        const auto* d = py::detail::array_descriptor_proxy(a->descr);
        ok = d->type_num == want[k].num && d->byteorder != kSwapped &&
             (a->flags & kFlags) == kFlags &&
             (!s.writable || (a->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_)) &&
             a->nd == param->nd;
        for (int dim = 0; ok && dim < a->nd; ++dim) ok = a->dimensions[dim] == param->dimensions[dim];
      }
      if (!ok) raise_bad_item(slots, first, i, k, want[k].num, want[k].why);
      int64_t size = 1;
      for (int dim = 0; dim < a->nd; ++dim) size *= a->dimensions[dim];
      sc.ptr[size_t(i) * nslots + k] = a->data;
      if (size > 0)
        sc.intervals.push_back({uintptr_t(a->data),
                                uintptr_t(a->data) + uintptr_t(size * want[k].itemsize), k,
                                int64_t(i)});
      if (k == 0) sc.offsets[i + 1] = sc.offsets[i] + size;
    }
  }

  require_disjoint(sc.intervals, slots);

  CheckedList out;
  out.tl.n = n;
  out.tl.slots = nslots;
  out.tl.ptr = sc.ptr.data();
  out.tl.offsets = sc.offsets.data();
  out.dtype = pdt;
  out.state = sdt;
  return out;
}

}  // namespace fusedtrain::bind

#include "bind/cuda_tensor_list.h"

#include <string>

#include "bind/cuda_arrays.h"
#include "cuda/runtime.h"

namespace fusedtrain::bind {

namespace {

// The optimizer dtypes' typestrs: bfloat16 is '<V2', as torch and ml_dtypes
// export it.
bool dtype_of(std::string_view typestr, DType& out) {
  if (typestr == "<f4") out = DType::F32;
  else if (typestr == "<f8") out = DType::F64;
  else if (typestr == "<f2") out = DType::F16;
  else if (typestr == "<V2") out = DType::BF16;
  else return false;
  return true;
}

// GPU arrays for check_lists_with: each item's interface dict is parsed and
// checked in the order of the NumPy checks (dtype, shape, layout,
// writability), with their messages.
class DeviceReader {
 public:
  struct Want {
    const char* typestr;
    int64_t itemsize;
  };

  static Want want(DType d) {
    switch (d) {
      case DType::F32: return {"<f4", 4};
      case DType::F64: return {"<f8", 8};
      case DType::F16: return {"<f2", 2};
      case DType::BF16: return {"<V2", 2};
    }
    return {"", 0};
  }

  // params[0] is parsed into param_ and kept: item(0, 0) reuses it.
  bool dtype(const SlotArg& s, py::ssize_t i, bool first, DType& out, std::string& received) {
    const std::string name = item_name(s, i);
    if (first) like_ = "a GPU array like " + name;
    DevArray& a = first ? param_ : cur_;
    parse(name, PySequence_Fast_ITEMS(s.list.ptr())[i],
          first ? "a GPU array (an object with __cuda_array_interface__)" : like_, a);
    if (dtype_of(a.typestr, out)) return true;
    received = dtype_name(a.typestr);
    return false;
  }

  ListItem item(const std::vector<SlotArg>& slots, py::ssize_t i, int k, const Want& w,
                const std::string& why) {
    const SlotArg& s = slots[k];
    DevArray& a = k == 0 ? param_ : cur_;
    const std::string name = item_name(s, i);
    if (i > 0 || k > 0) parse(name, PySequence_Fast_ITEMS(s.list.ptr())[i], like_, a);
    if (a.typestr != w.typestr)
      throw py::type_error(name + ": expected dtype " + dtype_name(w.typestr) + " (" + why +
                           "), received " + dtype_name(a.typestr));
    if (k > 0 && !same_shape(a, param_))
      throw py::value_error(name + ": expected shape " + shape_str(param_) + " (the shape of " +
                            item_name(slots.front(), i) + "), received " + shape_str(a));
    if (!a.contiguous)
      throw py::value_error(name +
                            ": expected a C-contiguous array, received a non-contiguous view "
                            "(pass cupy.ascontiguousarray(...) and keep that array)");
    if (a.ptr % uintptr_t(w.itemsize) != 0)
      throw py::value_error(name + ": expected an aligned array, received an unaligned one");
    if (s.writable && a.readonly)
      throw py::value_error(name +
                            ": expected a writable array (it is written in place), received a "
                            "read-only array");
    return {a.ptr, a.numel};
  }

 private:
  DevArray param_, cur_;  // params[i], and the item of another slot being checked
  std::string like_;      // "a GPU array like params[0]"
};

}  // namespace

CheckedList check_gpu_lists(const std::vector<SlotArg>& slots, bool step) {
  DeviceReader rd;
  const CheckedList c = check_lists_with(rd, slots, step);
  // Where the memory is: only a GPU can say (stand-ins carry fake pointers).
  if (has_device()) {
    const int device = cuda::current_device();
    for (int64_t i = 0; i < c.tl.n; ++i) {
      if (c.tl.numel[i] == 0) continue;
      for (int k = 0; k < c.tl.slots; ++k)
        check_device_memory(item_name(slots[k], i), c.tl.ptr[i * c.tl.slots + k], device);
    }
  }
  return c;
}

float* flag_ptr(const char* name, py::handle h, bool writable) {
  DevArray a;
  parse(name, h, "a 1-element float32 GPU array", a);
  if (a.typestr != "<f4" || a.numel != 1)
    throw py::type_error(std::string(name) +
                         ": expected a 1-element float32 GPU array, received dtype " +
                         dtype_name(a.typestr) + " and shape " + shape_str(a));
  if (a.ptr % 4 != 0)
    throw py::value_error(std::string(name) +
                          ": expected an aligned array, received an unaligned one");
  if (writable && a.readonly)
    throw py::value_error(std::string(name) +
                          ": expected a writable array, received a read-only array");
  if (has_device()) {
    const cuda::PointerQuery q = cuda::query_pointer(reinterpret_cast<void*>(a.ptr));
    if (q.error != 0 || !q.device_memory)
      throw py::value_error(std::string(name) +
                            ": expected GPU memory (device or managed), received host or "
                            "unregistered memory");
  }
  return reinterpret_cast<float*>(a.ptr);
}

StepLayout gpu_step_layout(const CheckedList& c, py::handle found_inf, bool stochastic,
                           uint64_t seed, uint64_t offset) {
  StepLayout lay = step_layout(c, stochastic, seed, offset);
  lay.found_inf = found_inf.is_none() ? nullptr : flag_ptr("found_inf", found_inf, false);
  return lay;
}

double* device_double(std::string_view name, py::handle h, bool writable) {
  DevArray a;
  parse(name, h, "a GPU array (an object with __cuda_array_interface__)", a);
  if (a.typestr != "<f8" || a.numel != 1)
    throw py::type_error(name + ": expected one float64 element, received dtype " +
                         dtype_name(a.typestr) + " shape " + shape_str(a));
  if (writable && a.readonly)
    throw py::value_error(name + ": expected a writable array, received a read-only array");
  return reinterpret_cast<double*>(a.ptr);
}

}  // namespace fusedtrain::bind

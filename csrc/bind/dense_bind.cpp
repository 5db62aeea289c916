// Bindings of the dense-layer kernels: argument checks with the GIL held,
// outputs allocated here when not given, then the kernel without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <climits>
#include <string>

#include "bind/arrays.h"
#include "cpu/dense_cpu.h"

namespace py = pybind11;

namespace fusedtrain::bind {

namespace {

Act act_from(int code) {
  if (code < int(Act::Identity) || code > int(Act::Softmax))
    throw py::value_error("activation: unknown activation code " + std::to_string(code));
  return Act(code);
}

// A 2-d C-contiguous float matrix argument of the call.
py::array matrix(std::string_view name, py::handle h, int num, std::string_view why,
                 bool writable) {
  py::array a = as_array(name, h);
  same_dtype(name, a, num, why);
  ndim_is(name, a, 2);
  contiguous(name, a, writable);
  if (a.shape(0) > INT_MAX || a.shape(1) > INT_MAX)
    throw py::value_error(name + ": dimensions above 2^31 - 1 are not supported by the BLAS, received " +
                          shape_str(a));
  return a;
}

// An output: the given array checked against its expected shape, or a new one.
py::array output(std::string_view name, py::handle h, int num, py::ssize_t rows,
                 py::ssize_t cols) {
  if (h.is_none()) {
    if (cols < 0) return py::array(py::dtype(num), std::vector<py::ssize_t>{rows});
    return py::array(py::dtype(num), std::vector<py::ssize_t>{rows, cols});
  }
  py::array a = as_array(name, h);
  same_dtype(name, a, num, "the dtype of x");
  if (cols < 0) {
    shape_is(name, a, {rows});
  } else {
    shape_is(name, a, {rows, cols});
  }
  contiguous(name, a, true);
  return a;
}

template <typename T>
T* ptr(const py::array& a) {
  return static_cast<T*>(const_cast<void*>(a.data()));
}

}  // namespace

void bind_dense(py::module_& m) {
  m.def(
      "dense_forward",
      [](py::handle x_, py::handle w_, py::handle b_, py::handle y_, int act_code, double slope) {
        const Act act = act_from(act_code);
        // x is (B, in), w is (in, out), b is (out,), y is (B, out)
        py::array x = as_array("x", x_);
        const int num = float_dtype("x", x);
        x = matrix("x", x_, num, "", false);
        py::array w = matrix("w", w_, num, "the dtype of x", false);
        const py::ssize_t B = x.shape(0), in = x.shape(1), out = w.shape(1);
        if (w.shape(0) != in)
          throw py::value_error("w: expected shape (" + std::to_string(in) +
                                ", out) to match x.shape[1] = " + std::to_string(in) +
                                ", received " + shape_str(w));
        py::array b;  // stays unused when b_ is None (a default py::array is not null)
        const bool has_b = !b_.is_none();
        if (has_b) {
          b = as_array("b", b_);
          same_dtype("b", b, num, "the dtype of x");
          shape_is("b", b, {out});
          contiguous("b", b, false);
        }
        py::array y = output("out", y_, num, B, out);
        disjoint("out", y, "x", x);
        disjoint("out", y, "w", w);
        if (has_b) disjoint("out", y, "b", b);
        py::object z = py::none();
        void* zp = nullptr;
        if (saved_of(act) == Saved::PreActivation) {
          py::array za(py::dtype(num), std::vector<py::ssize_t>{B, out});
          zp = za.mutable_data();
          z = za;
        }
        const void* bp = has_b ? b.data() : nullptr;
        {
          py::gil_scoped_release nogil;  // no Python object is touched below
          auto run = [&](auto tag) {
            using T = decltype(tag);
            cpu::dense_forward<T>(ptr<T>(x), ptr<T>(w), static_cast<const T*>(bp), ptr<T>(y),
                                  static_cast<T*>(zp), B, in, out, act, T(slope));
          };
          num == f32_num() ? run(float()) : run(double());
        }
        return py::make_tuple(y, z);
      },
      "y = act(x @ w + b) with the epilogue fused (use fusedtrain.ops.dense_forward).");

  m.def(
      "dense_backward",
      [](py::handle dy_, py::handle x_, py::handle w_, py::handle saved_, int act_code,
         double slope, bool need_dx, py::handle dw_, py::handle db_, bool accumulate,
         py::handle dx_, py::handle ws_) {
        const Act act = act_from(act_code);
        // dy is (B, out), x (B, in), w (in, out), saved (B, out)
        py::array dy = as_array("dy", dy_);
        const int num = float_dtype("dy", dy);
        dy = matrix("dy", dy_, num, "", false);
        py::array x = matrix("x", x_, num, "the dtype of dy", false);
        py::array w = matrix("w", w_, num, "the dtype of dy", false);
        const py::ssize_t B = dy.shape(0), out = dy.shape(1), in = x.shape(1);
        if (x.shape(0) != B)
          throw py::value_error("x: expected " + std::to_string(B) +
                                " rows (dy.shape[0]), received shape " + shape_str(x));
        shape_is("w", w, {in, out});
        py::array saved;
        const bool has_saved = saved_of(act) != Saved::Nothing;
        if (has_saved) {
          if (saved_.is_none())
            throw py::value_error("saved: required for this activation (pass what dense_forward returned); received None");
          saved = matrix("saved", saved_, num, "the dtype of dy", false);
          shape_is("saved", saved, {B, out});
        }
        if (accumulate && (dw_.is_none() || db_.is_none()))
          throw py::value_error(std::string(dw_.is_none() ? "dw_out" : "db_out") +
                                ": required when accumulate=True; received None");
        py::array dw = output("dw_out", dw_, num, in, out);
        py::array db = output("db_out", db_, num, out, -1);
        for (auto* o : {&dw, &db}) {
          const char* on = o == &dw ? "dw_out" : "db_out";
          disjoint(on, *o, "dy", dy);
          disjoint(on, *o, "x", x);
          disjoint(on, *o, "w", w);
          if (has_saved) disjoint(on, *o, "saved", saved);
        }
        disjoint("dw_out", dw, "db_out", db);
        // dx and the dz workspace: given (reused across batches) or new
        py::object dx = py::none();
        void *dxp = nullptr, *dzp = nullptr;
        std::vector<std::pair<const char*, py::array>> inputs = {{"dy", dy}, {"x", x}, {"w", w},
                                                                 {"dw_out", dw}, {"db_out", db}};
        if (has_saved) inputs.push_back({"saved", saved});
        if (need_dx) {
          py::array a = output("dx_out", dx_, num, B, in);
          if (!dx_.is_none())
            for (const auto& [name, arr] : inputs) disjoint("dx_out", a, name, arr);
          dxp = a.mutable_data();
          dx = a;
          inputs.push_back({"dx_out", a});
        } else if (!dx_.is_none()) {
          throw py::value_error("dx_out: given with need_dx=False; pass one or the other");
        }
        py::array dz;
        if (act != Act::Identity) {
          dz = output("workspace", ws_, num, B, out);
          if (!ws_.is_none())
            for (const auto& [name, arr] : inputs) disjoint("workspace", dz, name, arr);
          dzp = dz.mutable_data();
        }
        const void* sp = has_saved ? saved.data() : nullptr;
        {
          py::gil_scoped_release nogil;  // no Python object is touched below
          auto run = [&](auto tag) {
            using T = decltype(tag);
            cpu::dense_backward<T>(ptr<T>(dy), ptr<T>(x), ptr<T>(w), static_cast<const T*>(sp),
                                   static_cast<T*>(dzp), static_cast<T*>(dxp), ptr<T>(dw),
                                   ptr<T>(db), B, in, out, act, T(slope), accumulate);
          };
          num == f32_num() ? run(float()) : run(double());
        }
        return py::make_tuple(dx, dw, db);
      },
      "dx, dw, db of a dense layer (use fusedtrain.ops.dense_backward).");
}

}  // namespace fusedtrain::bind

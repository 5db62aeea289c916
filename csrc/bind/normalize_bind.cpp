// Bindings of the batch- and layer-normalization kernels: every argument is
// checked with the GIL held before anything is written (a call that raises
// changes no output and no running statistic), outputs are allocated here when
// not given, then the kernel runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <utility>
#include <vector>

#include "bind/arrays.h"
#include "cpu/normalize_cpu.h"

namespace py = pybind11;

namespace fusedtrain::bind {

namespace {

using Named = std::vector<std::pair<std::string, py::array>>;

Act norm_act(int code) {
  if (code < int(Act::Identity) || code >= int(Act::Softmax))
    throw py::value_error("activation: unknown or unsupported activation code " +
                          std::to_string(code) + " (softmax is not allowed after a normalization)");
  return Act(code);
}

// x-like (B, C) input of dtype num.
py::array mat_in(const std::string& name, py::handle h, int num, const char* why) {
  py::array a = as_array(name, h);
  same_dtype(name, a, num, why);
  ndim_is(name, a, 2);
  contiguous(name, a, false);
  return a;
}

// (n,) vector of dtype num; writable when written in place.
py::array vec(const std::string& name, py::handle h, int num, py::ssize_t n, bool writable,
              const char* why) {
  py::array a = as_array(name, h);
  same_dtype(name, a, num, why);
  shape_is(name, a, {n});
  contiguous(name, a, writable);
  return a;
}

// An output given (checked) or new; given ones must not overlap any of `ins`.
py::array out_arr(const std::string& name, py::handle h, int num,
                  std::vector<py::ssize_t> shape, const Named& ins) {
  if (h.is_none()) return py::array(py::dtype(num), shape);
  py::array a = as_array(name, h);
  same_dtype(name, a, num, "the dtype of x");
  if (shape.size() == 2) {
    shape_is(name, a, {shape[0], shape[1]});
  } else {
    shape_is(name, a, {shape[0]});
  }
  contiguous(name, a, true);
  for (const auto& [n, arr] : ins) disjoint(name, a, n, arr);
  return a;
}

template <typename T>
T* ptr(const py::array& a) {
  return static_cast<T*>(const_cast<void*>(a.data()));
}
template <typename T>
T* ptr_or_null(bool has, const py::array& a) {
  return has ? ptr<T>(a) : nullptr;
}

// weight and bias: both arrays of shape (n,) or both None; returns affine.
bool affine_pair(py::handle w_, py::handle b_, int num, py::ssize_t n, py::array& w,
                 py::array& b, const char* why) {
  if (w_.is_none() != b_.is_none())
    throw py::value_error(std::string(w_.is_none() ? "weight" : "bias") +
                          ": expected an array like " + (w_.is_none() ? "bias" : "weight") +
                          " (both or neither), received None");
  if (w_.is_none()) return false;
  w = vec("weight", w_, num, n, false, why);
  b = vec("bias", b_, num, n, false, why);
  return true;
}

// The backward passes' weight and its gradient outputs (dweight_out,
// dbias_out: given or allocated, disjoint from everything in ins, which
// gains them); returns affine (weight given).
bool affine_grads(py::handle w_, py::handle dw_, py::handle db_, bool accumulate, int num,
                  py::ssize_t C, Named& ins, py::array& w, py::array& dw, py::array& db) {
  if (w_.is_none()) {
    if (!dw_.is_none() || !db_.is_none())
      throw py::value_error(std::string(dw_.is_none() ? "dbias_out" : "dweight_out") +
                            ": given without weight (no affine: no parameter gradients)");
    return false;
  }
  w = vec("weight", w_, num, C, false, "the dtype of dy");
  ins.push_back({"weight", w});
  if (accumulate && (dw_.is_none() || db_.is_none()))
    throw py::value_error(std::string(dw_.is_none() ? "dweight_out" : "dbias_out") +
                          ": required when accumulate=True; received None");
  dw = out_arr("dweight_out", dw_, num, {C}, ins);
  db = out_arr("dbias_out", db_, num, {C}, ins);
  disjoint("dweight_out", dw, "dbias_out", db);
  ins.push_back({"dweight_out", dw});
  ins.push_back({"dbias_out", db});
  return true;
}

}  // namespace

void bind_normalize(py::module_& m) {
  m.def(
      "batch_norm_forward",
      [](py::handle x_, py::handle w_, py::handle b_, py::handle rm_, py::handle rv_,
         bool training, double momentum, double eps, int act_code, double slope, py::handle y_) {
        const Act act = norm_act(act_code);
        // x is (B, C); weight, bias, running_mean, running_var (C,); y (B, C)
        py::array x = as_array("x", x_);
        const int num = float_dtype("x", x);
        x = mat_in("x", x_, num, "");
        const py::ssize_t B = x.shape(0), C = x.shape(1);
        if (!(momentum >= 0.0 && momentum <= 1.0))
          throw py::value_error("momentum: expected a value in [0, 1], received " +
                                std::to_string(momentum));
        if (!(eps > 0.0 && eps < 1e308))
          throw py::value_error("eps: expected a finite value > 0, received " + std::to_string(eps));
        py::array w, b, rm, rv;
        const bool affine = affine_pair(w_, b_, num, C, w, b, "the dtype of x");
        if (rm_.is_none() != rv_.is_none())
          throw py::value_error(std::string(rm_.is_none() ? "running_mean" : "running_var") +
                                ": expected an array when " +
                                (rm_.is_none() ? "running_var" : "running_mean") +
                                " is given (both or neither), received None");
        const bool running = !rm_.is_none();
        if (running) {
          rm = vec("running_mean", rm_, num, C, training, "the dtype of x");
          rv = vec("running_var", rv_, num, C, training, "the dtype of x");
          disjoint("running_mean", rm, "running_var", rv);
          disjoint("running_mean", rm, "x", x);
          disjoint("running_var", rv, "x", x);
          if (affine)
            for (auto* p : {&rm, &rv}) {
              const char* pn = p == &rm ? "running_mean" : "running_var";
              disjoint(pn, *p, "weight", w);
              disjoint(pn, *p, "bias", b);
            }
        } else if (!training) {
          throw py::value_error("running_mean: required when training=False (eval uses the running statistics), received None");
        }
        if (training && B <= 1)
          throw py::value_error("x: Expected more than 1 value per channel when training, received shape " +
                                shape_str(x));
        Named ins = {{"x", x}};
        if (affine) {
          ins.push_back({"weight", w});
          ins.push_back({"bias", b});
        }
        if (running) {
          ins.push_back({"running_mean", rm});
          ins.push_back({"running_var", rv});
        }
        py::array y = out_arr("out", y_, num, {B, C}, ins);
        py::array mean(py::dtype(f64_num()), std::vector<py::ssize_t>{C});
        py::array rstd(py::dtype(f64_num()), std::vector<py::ssize_t>{C});
        py::object z = py::none();
        py::array za;
        const bool has_z = saved_of(act) == Saved::PreActivation;
        if (has_z) {
          za = py::array(py::dtype(num), std::vector<py::ssize_t>{B, C});
          z = za;
        }
        {
          py::gil_scoped_release nogil;  // no Python object is touched below
          auto run = [&](auto tag) {
            using T = decltype(tag);
            cpu::batch_norm_forward<T>(ptr<T>(x), ptr_or_null<T>(affine, w),
                                       ptr_or_null<T>(affine, b), ptr_or_null<T>(running, rm),
                                       ptr_or_null<T>(running, rv), ptr<T>(y),
                                       ptr_or_null<T>(has_z, za), ptr<double>(mean), ptr<double>(rstd), B,
                                       C, training, momentum, eps, act, T(slope));
          };
          num == f32_num() ? run(float()) : run(double());
        }
        return py::make_tuple(y, mean, rstd, z);
      },
      "(y, mean, rstd, z): batch normalization + activation (use fusedtrain.ops.batch_norm_forward).");

  m.def(
      "batch_norm_backward",
      [](py::handle dy_, py::handle x_, py::handle mean_, py::handle rstd_, py::handle s_,
         py::handle w_, int act_code, double slope, py::handle dx_, py::handle dw_,
         py::handle db_, bool accumulate) {
        const Act act = norm_act(act_code);
        // dy, x, s (B, C); mean, rstd, weight, dweight, dbias (C,); dx (B, C)
        py::array dy = as_array("dy", dy_);
        const int num = float_dtype("dy", dy);
        dy = mat_in("dy", dy_, num, "");
        const py::ssize_t B = dy.shape(0), C = dy.shape(1);
        py::array x = mat_in("x", x_, num, "the dtype of dy");
        shape_is("x", x, {B, C});
        py::array mean = vec("saved[0] (mean)", mean_, f64_num(), C, false, "float64 (the statistics are kept in double)");
        py::array rstd = vec("saved[1] (rstd)", rstd_, f64_num(), C, false, "float64 (the statistics are kept in double)");
        Named ins = {{"dy", dy}, {"x", x}, {"saved[0]", mean}, {"saved[1]", rstd}};
        py::array s;
        const bool has_s = act != Act::Identity;
        if (has_s) {
          if (s_.is_none())
            throw py::value_error("saved[2]: required for this activation (pass what batch_norm_forward returned); received None");
          s = mat_in("saved[2]", s_, num, "the dtype of dy");
          shape_is("saved[2]", s, {B, C});
          ins.push_back({"saved[2]", s});
        }
        py::array w, dw, db;
        const bool affine = affine_grads(w_, dw_, db_, accumulate, num, C, ins, w, dw, db);
        py::array dx = out_arr("dx_out", dx_, num, {B, C}, ins);
        if (B < 1) throw py::value_error("dy: expected at least one row, received shape " + shape_str(dy));
        {
          py::gil_scoped_release nogil;  // no Python object is touched below
          auto run = [&](auto tag) {
            using T = decltype(tag);
            cpu::batch_norm_backward<T>(ptr<T>(dy), ptr<T>(x), ptr<double>(mean), ptr<double>(rstd),
                                        ptr_or_null<T>(has_s, s), ptr_or_null<T>(affine, w),
                                        ptr<T>(dx), ptr_or_null<T>(affine, dw),
                                        ptr_or_null<T>(affine, db), B, C, act, T(slope),
                                        accumulate);
          };
          num == f32_num() ? run(float()) : run(double());
        }
        if (!affine) return py::tuple(py::make_tuple(dx, py::none(), py::none()));
        return py::tuple(py::make_tuple(dx, dw, db));
      },
      "(dx, dweight, dbias) of batch normalization in training mode (use fusedtrain.ops.batch_norm_backward).");

  m.def(
      "layer_norm_forward",
      [](py::handle x_, py::handle w_, py::handle b_, double eps, py::handle y_) {
        // x is (B, C); weight, bias (C,); y (B, C); mean, rstd (B,)
        py::array x = as_array("x", x_);
        const int num = float_dtype("x", x);
        x = mat_in("x", x_, num, "");
        const py::ssize_t B = x.shape(0), C = x.shape(1);
        if (!(eps > 0.0 && eps < 1e308))
          throw py::value_error("eps: expected a finite value > 0, received " + std::to_string(eps));
        if (C < 1)
          throw py::value_error("x: expected at least one column to normalise over, received shape " + shape_str(x));
        py::array w, b;
        const bool affine = affine_pair(w_, b_, num, C, w, b, "the dtype of x");
        Named ins = {{"x", x}};
        if (affine) {
          ins.push_back({"weight", w});
          ins.push_back({"bias", b});
        }
        py::array y = out_arr("out", y_, num, {B, C}, ins);
        py::array mean(py::dtype(f64_num()), std::vector<py::ssize_t>{B});
        py::array rstd(py::dtype(f64_num()), std::vector<py::ssize_t>{B});
        {
          py::gil_scoped_release nogil;  // no Python object is touched below
          auto run = [&](auto tag) {
            using T = decltype(tag);
            cpu::layer_norm_forward<T>(ptr<T>(x), ptr_or_null<T>(affine, w),
                                       ptr_or_null<T>(affine, b), ptr<T>(y), ptr<double>(mean),
                                       ptr<double>(rstd), B, C, eps);
          };
          num == f32_num() ? run(float()) : run(double());
        }
        return py::make_tuple(y, mean, rstd);
      },
      "(y, mean, rstd): layer normalization of each row (use fusedtrain.ops.layer_norm_forward).");

  m.def(
      "layer_norm_backward",
      [](py::handle dy_, py::handle x_, py::handle mean_, py::handle rstd_, py::handle w_,
         py::handle dx_, py::handle dw_, py::handle db_, bool accumulate) {
        // dy, x (B, C); mean, rstd (B,); weight, dweight, dbias (C,); dx (B, C)
        py::array dy = as_array("dy", dy_);
        const int num = float_dtype("dy", dy);
        dy = mat_in("dy", dy_, num, "");
        const py::ssize_t B = dy.shape(0), C = dy.shape(1);
        py::array x = mat_in("x", x_, num, "the dtype of dy");
        shape_is("x", x, {B, C});
        if (C < 1)
          throw py::value_error("dy: expected at least one column, received shape " + shape_str(dy));
        py::array mean = vec("saved[0] (mean)", mean_, f64_num(), B, false, "float64 (the statistics are kept in double)");
        py::array rstd = vec("saved[1] (rstd)", rstd_, f64_num(), B, false, "float64 (the statistics are kept in double)");
        Named ins = {{"dy", dy}, {"x", x}, {"saved[0]", mean}, {"saved[1]", rstd}};
        py::array w, dw, db;
        const bool affine = affine_grads(w_, dw_, db_, accumulate, num, C, ins, w, dw, db);
        py::array dx = out_arr("dx_out", dx_, num, {B, C}, ins);
        {
          py::gil_scoped_release nogil;  // no Python object is touched below
          auto run = [&](auto tag) {
            using T = decltype(tag);
            cpu::layer_norm_backward<T>(ptr<T>(dy), ptr<T>(x), ptr<double>(mean), ptr<double>(rstd),
                                        ptr_or_null<T>(affine, w), ptr<T>(dx),
                                        ptr_or_null<T>(affine, dw), ptr_or_null<T>(affine, db),
                                        B, C, accumulate);
          };
          num == f32_num() ? run(float()) : run(double());
        }
        if (!affine) return py::tuple(py::make_tuple(dx, py::none(), py::none()));
        return py::tuple(py::make_tuple(dx, dw, db));
      },
      "(dx, dweight, dbias) of layer normalization (use fusedtrain.ops.layer_norm_backward).");
}

}  // namespace fusedtrain::bind

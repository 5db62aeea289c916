// _cuda bindings of the batch- and layer-normalization kernels, the GPU twins
// of bind/normalize_bind.cpp with the same checks, in the same order, and the
// same messages. Arrays are objects with __cuda_array_interface__ (CuPy
// arrays, torch CUDA tensors); options arrive validated from fusedtrain.ops
// (python/fusedtrain/_ops_normalize.py), positional as _core's, followed by
// `empty` (the allocator of missing outputs: y, mean, rstd, z, dx, dweight,
// dbias), `workspace` (the column reductions' partial sums), `dry_run` and
// `stream` (the cudaStream_t to launch on, as an integer), as in
// bind/cuda_loss_bind.cpp. Every check runs before anything is allocated or
// launched: a call that raises changes no output and no running statistic.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "bind/cuda_arrays.h"
#include "cuda/normalize_cuda.h"

namespace py = pybind11;

namespace fusedtrain::bind {

namespace {

const char* const kFirstGpu = "a GPU array (an object with __cuda_array_interface__)";
const char* const kF64 = "<f8";
const char* const kStatsWhy = "float64 (the statistics are kept in double)";

using Named = std::vector<std::pair<std::string, const DevArray*>>;

Act norm_act(int code) {
  if (code < int(Act::Identity) || code >= int(Act::Softmax))
    throw py::value_error("activation: unknown or unsupported activation code " +
                          std::to_string(code) + " (softmax is not allowed after a normalization)");
  return Act(code);
}

py::tuple shape_tuple(std::initializer_list<int64_t> dims) {
  py::tuple t(dims.size());
  size_t k = 0;
  for (int64_t d : dims) t[k++] = py::int_(d);
  return t;
}

// x-like (B, C) input of dtype `typestr` (first: its own dtype, checked float).
void mat_in(const std::string& name, py::handle h, const std::string& first,
            const std::string& typestr, const char* why, DevArray& a) {
  parse(name, h, first.empty() ? std::string(kFirstGpu) : "a GPU array like " + first, a);
  if (first.empty()) {
    float_dtype(name, a);
  } else {
    same_dtype(name, a, typestr, why);
  }
  ndim_is(name, a, 2);
  contiguous(name, a, false);
}

// (n,) vector of dtype `typestr`; writable when written in place.
void vec(const std::string& name, py::handle h, const std::string& first,
         const std::string& typestr, int64_t n, bool writable, const char* why, DevArray& a) {
  parse(name, h, "a GPU array like " + first, a);
  same_dtype(name, a, typestr, why);
  shape_is(name, a, {n});
  contiguous(name, a, writable);
}

// A given output (checked, disjoint from every array of `ins`); returns
// whether one was given (the binding allocates it after every check otherwise).
bool out_given(const std::string& name, py::handle h, const std::string& first,
               const std::string& typestr, std::initializer_list<int64_t> shape,
               const Named& ins, DevArray& a) {
  if (h.is_none()) return false;
  parse(name, h, "a GPU array like " + first, a);
  same_dtype(name, a, typestr, "the dtype of x");
  shape_is(name, a, shape);
  contiguous(name, a, true);
  for (const auto& [n, arr] : ins) disjoint(name, a, n, *arr);
  return true;
}

bool affine_pair(py::handle w_, py::handle b_, const DevArray& x, int64_t n, DevArray& w,
                 DevArray& b) {
  if (w_.is_none() != b_.is_none())
    throw py::value_error(std::string(w_.is_none() ? "weight" : "bias") +
                          ": expected an array like " + (w_.is_none() ? "bias" : "weight") +
                          " (both or neither), received None");
  if (w_.is_none()) return false;
  vec("weight", w_, "x", x.typestr, n, false, "the dtype of x", w);
  vec("bias", b_, "x", x.typestr, n, false, "the dtype of x", b);
  return true;
}

// The backward passes' weight and gradient outputs (normalize_bind.cpp's
// affine_grads): returns affine; has_dw / has_db say which outputs were given.
bool affine_grads(py::handle w_, py::handle dw_, py::handle db_, bool accumulate,
                  const DevArray& dy, int64_t C, Named& ins, DevArray& w, DevArray& dw,
                  DevArray& db, bool& has_dw, bool& has_db) {
  has_dw = has_db = false;
  if (w_.is_none()) {
    if (!dw_.is_none() || !db_.is_none())
      throw py::value_error(std::string(dw_.is_none() ? "dbias_out" : "dweight_out") +
                            ": given without weight (no affine: no parameter gradients)");
    return false;
  }
  vec("weight", w_, "dy", dy.typestr, C, false, "the dtype of dy", w);
  ins.push_back({"weight", &w});
  if (accumulate && (dw_.is_none() || db_.is_none()))
    throw py::value_error(std::string(dw_.is_none() ? "dweight_out" : "dbias_out") +
                          ": required when accumulate=True; received None");
  has_dw = out_given("dweight_out", dw_, "dy", dy.typestr, {C}, ins, dw);
  has_db = out_given("dbias_out", db_, "dy", dy.typestr, {C}, ins, db);
  if (has_dw && has_db) disjoint("dweight_out", dw, "dbias_out", db);
  if (has_dw) ins.push_back({"dweight_out", &dw});
  if (has_db) ins.push_back({"dbias_out", &db});
  return true;
}

py::object given_or_new(bool given, py::handle h, py::handle empty, const char* name,
                        const py::tuple& shape, const std::string& typestr, DevArray& a) {
  if (given) return py::reinterpret_borrow<py::object>(h);
  return make_output(empty, name, shape, typestr, a);
}

// (dx, dweight, dbias) of a backward pass: the given outputs, or new ones of
// dy's dtype (dweight, dbias None without affine).
py::tuple grad_outputs(py::handle empty, const DevArray& dy, int64_t B, int64_t C, bool affine,
                       bool has_dx, py::handle dx_, DevArray& dx, bool has_dw, py::handle dw_,
                       DevArray& dw, bool has_db, py::handle db_, DevArray& db) {
  py::object dx_o =
      given_or_new(has_dx, dx_, empty, "dx_out", shape_tuple({B, C}), dy.typestr, dx);
  if (!affine) return py::make_tuple(dx_o, py::none(), py::none());
  py::object dw_o = given_or_new(has_dw, dw_, empty, "dweight_out", shape_tuple({C}), dy.typestr, dw);
  py::object db_o = given_or_new(has_db, db_, empty, "dbias_out", shape_tuple({C}), dy.typestr, db);
  return py::make_tuple(dx_o, dw_o, db_o);
}

}  // namespace

void bind_cuda_normalize(py::module_& m) {
  m.def(
      "batch_norm_forward",
      [](py::handle x_, py::handle w_, py::handle b_, py::handle rm_, py::handle rv_,
         bool training, double momentum, double eps, int act_code, double slope, py::handle y_,
         py::handle empty, py::handle workspace, bool dry_run, uintptr_t stream) -> py::object {
        const Act act = norm_act(act_code);
        // x is (B, C); weight, bias, running_mean, running_var (C,); y (B, C)
        DevArray x, w, b, rm, rv, y, mean, rstd, z;
        mat_in("x", x_, "", "", "", x);
        const int64_t B = x.shape[0], C = x.shape[1];
        if (!(momentum >= 0.0 && momentum <= 1.0))
          throw py::value_error("momentum: expected a value in [0, 1], received " +
                                std::to_string(momentum));
        if (!(eps > 0.0 && eps < 1e308))
          throw py::value_error("eps: expected a finite value > 0, received " + std::to_string(eps));
        const bool affine = affine_pair(w_, b_, x, C, w, b);
        if (rm_.is_none() != rv_.is_none())
          throw py::value_error(std::string(rm_.is_none() ? "running_mean" : "running_var") +
                                ": expected an array when " +
                                (rm_.is_none() ? "running_var" : "running_mean") +
                                " is given (both or neither), received None");
        const bool running = !rm_.is_none();
        if (running) {
          vec("running_mean", rm_, "x", x.typestr, C, training, "the dtype of x", rm);
          vec("running_var", rv_, "x", x.typestr, C, training, "the dtype of x", rv);
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
        Named ins = {{"x", &x}};
        if (affine) {
          ins.push_back({"weight", &w});
          ins.push_back({"bias", &b});
        }
        if (running) {
          ins.push_back({"running_mean", &rm});
          ins.push_back({"running_var", &rv});
        }
        const bool has_y = out_given("out", y_, "x", x.typestr, {B, C}, ins, y);
        on_current_device({{"x", &x},
                           {"weight", affine ? &w : nullptr},
                           {"bias", affine ? &b : nullptr},
                           {"running_mean", running ? &rm : nullptr},
                           {"running_var", running ? &rv : nullptr},
                           {"out", has_y ? &y : nullptr}});
        if (dry_run) return py::none();
        require_device();
        py::object y_o = given_or_new(has_y, y_, empty, "out", shape_tuple({B, C}), x.typestr, y);
        py::object mean_o = make_output(empty, "mean", shape_tuple({C}), kF64, mean);
        py::object rstd_o = make_output(empty, "rstd", shape_tuple({C}), kF64, rstd);
        const bool has_z = saved_of(act) == Saved::PreActivation;
        py::object z_o = py::none();
        if (has_z) z_o = make_output(empty, "z", shape_tuple({B, C}), x.typestr, z);
        py::object keep;
        void* ws = make_workspace(workspace, cuda::bn_forward_workspace_bytes(B, C), 8, keep);
        {
          py::gil_scoped_release nogil;
          cuda::batch_norm_forward(ptr_of(x), affine ? ptr_of(w) : nullptr,
                                   affine ? ptr_of(b) : nullptr, running ? ptr_of(rm) : nullptr,
                                   running ? ptr_of(rv) : nullptr, ptr_of(y),
                                   has_z ? ptr_of(z) : nullptr, static_cast<double*>(ptr_of(mean)),
                                   static_cast<double*>(ptr_of(rstd)), B, C, training, momentum,
                                   eps, act, slope, dtype_of(x), ws, as_stream(stream));
        }
        return py::make_tuple(y_o, mean_o, rstd_o, z_o);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("running_mean"),
      py::arg("running_var"), py::arg("training"), py::arg("momentum"), py::arg("eps"),
      py::arg("act_code"), py::arg("slope"), py::arg("out"), py::arg("empty"),
      py::arg("workspace"), py::arg("dry_run"), py::arg("stream"),
      "(y, mean, rstd, z): batch normalization + activation on the GPU (use "
      "fusedtrain.ops.batch_norm_forward).");

  m.def(
      "batch_norm_backward",
      [](py::handle dy_, py::handle x_, py::handle mean_, py::handle rstd_, py::handle s_,
         py::handle w_, int act_code, double slope, py::handle dx_, py::handle dw_,
         py::handle db_, bool accumulate, py::handle empty, py::handle workspace, bool dry_run,
         uintptr_t stream) -> py::object {
        const Act act = norm_act(act_code);
        // dy, x, s (B, C); mean, rstd, weight, dweight, dbias (C,); dx (B, C)
        DevArray dy, x, mean, rstd, s, w, dx, dw, db;
        mat_in("dy", dy_, "", "", "", dy);
        const int64_t B = dy.shape[0], C = dy.shape[1];
        mat_in("x", x_, "dy", dy.typestr, "the dtype of dy", x);
        shape_is("x", x, {B, C});
        vec("saved[0] (mean)", mean_, "dy", kF64, C, false, kStatsWhy, mean);
        vec("saved[1] (rstd)", rstd_, "dy", kF64, C, false, kStatsWhy, rstd);
        Named ins = {{"dy", &dy}, {"x", &x}, {"saved[0]", &mean}, {"saved[1]", &rstd}};
        const bool has_s = act != Act::Identity;
        if (has_s) {
          if (s_.is_none())
            throw py::value_error("saved[2]: required for this activation (pass what batch_norm_forward returned); received None");
          mat_in("saved[2]", s_, "dy", dy.typestr, "the dtype of dy", s);
          shape_is("saved[2]", s, {B, C});
          ins.push_back({"saved[2]", &s});
        }
        bool has_dw = false, has_db = false;
        const bool affine =
            affine_grads(w_, dw_, db_, accumulate, dy, C, ins, w, dw, db, has_dw, has_db);
        const bool has_dx = out_given("dx_out", dx_, "dy", dy.typestr, {B, C}, ins, dx);
        if (B < 1) throw py::value_error("dy: expected at least one row, received shape " + shape_str(dy));
        on_current_device({{"dy", &dy},
                           {"x", &x},
                           {"saved[0]", &mean},
                           {"saved[1]", &rstd},
                           {"saved[2]", has_s ? &s : nullptr},
                           {"weight", affine ? &w : nullptr},
                           {"dx_out", has_dx ? &dx : nullptr},
                           {"dweight_out", has_dw ? &dw : nullptr},
                           {"dbias_out", has_db ? &db : nullptr}});
        if (dry_run) return py::none();
        require_device();
        py::tuple grads = grad_outputs(empty, dy, B, C, affine, has_dx, dx_, dx, has_dw, dw_, dw,
                                       has_db, db_, db);
        py::object keep;
        void* ws = make_workspace(workspace, cuda::bn_backward_workspace_bytes(B, C), 8, keep);
        {
          py::gil_scoped_release nogil;
          cuda::batch_norm_backward(ptr_of(dy), ptr_of(x), static_cast<const double*>(ptr_of(mean)),
                                    static_cast<const double*>(ptr_of(rstd)),
                                    has_s ? ptr_of(s) : nullptr, affine ? ptr_of(w) : nullptr,
                                    ptr_of(dx), affine ? ptr_of(dw) : nullptr,
                                    affine ? ptr_of(db) : nullptr, B, C, act, slope, accumulate,
                                    dtype_of(dy), ws, as_stream(stream));
        }
        return grads;
      },
      py::arg("dy"), py::arg("x"), py::arg("mean"), py::arg("rstd"), py::arg("s"),
      py::arg("weight"), py::arg("act_code"), py::arg("slope"), py::arg("dx_out"),
      py::arg("dweight_out"), py::arg("dbias_out"), py::arg("accumulate"), py::arg("empty"),
      py::arg("workspace"), py::arg("dry_run"), py::arg("stream"),
      "(dx, dweight, dbias) of batch normalization in training mode on the GPU (use "
      "fusedtrain.ops.batch_norm_backward).");

  m.def(
      "layer_norm_forward",
      [](py::handle x_, py::handle w_, py::handle b_, double eps, py::handle y_, py::handle empty,
         bool dry_run, uintptr_t stream) -> py::object {
        // x is (B, C); weight, bias (C,); y (B, C); mean, rstd (B,)
        DevArray x, w, b, y, mean, rstd;
        mat_in("x", x_, "", "", "", x);
        const int64_t B = x.shape[0], C = x.shape[1];
        if (!(eps > 0.0 && eps < 1e308))
          throw py::value_error("eps: expected a finite value > 0, received " + std::to_string(eps));
        if (C < 1)
          throw py::value_error("x: expected at least one column to normalise over, received shape " + shape_str(x));
        const bool affine = affine_pair(w_, b_, x, C, w, b);
        Named ins = {{"x", &x}};
        if (affine) {
          ins.push_back({"weight", &w});
          ins.push_back({"bias", &b});
        }
        const bool has_y = out_given("out", y_, "x", x.typestr, {B, C}, ins, y);
        on_current_device({{"x", &x},
                           {"weight", affine ? &w : nullptr},
                           {"bias", affine ? &b : nullptr},
                           {"out", has_y ? &y : nullptr}});
        if (dry_run) return py::none();
        require_device();
        py::object y_o = given_or_new(has_y, y_, empty, "out", shape_tuple({B, C}), x.typestr, y);
        py::object mean_o = make_output(empty, "mean", shape_tuple({B}), kF64, mean);
        py::object rstd_o = make_output(empty, "rstd", shape_tuple({B}), kF64, rstd);
        {
          py::gil_scoped_release nogil;
          cuda::layer_norm_forward(ptr_of(x), affine ? ptr_of(w) : nullptr,
                                   affine ? ptr_of(b) : nullptr, ptr_of(y),
                                   static_cast<double*>(ptr_of(mean)),
                                   static_cast<double*>(ptr_of(rstd)), B, C, eps, dtype_of(x),
                                   as_stream(stream));
        }
        return py::make_tuple(y_o, mean_o, rstd_o);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("out"),
      py::arg("empty"), py::arg("dry_run"), py::arg("stream"),
      "(y, mean, rstd): layer normalization of each row on the GPU (use "
      "fusedtrain.ops.layer_norm_forward).");

  m.def(
      "layer_norm_backward",
      [](py::handle dy_, py::handle x_, py::handle mean_, py::handle rstd_, py::handle w_,
         py::handle dx_, py::handle dw_, py::handle db_, bool accumulate, py::handle empty,
         py::handle workspace, bool dry_run, uintptr_t stream) -> py::object {
        // dy, x (B, C); mean, rstd (B,); weight, dweight, dbias (C,); dx (B, C)
        DevArray dy, x, mean, rstd, w, dx, dw, db;
        mat_in("dy", dy_, "", "", "", dy);
        const int64_t B = dy.shape[0], C = dy.shape[1];
        mat_in("x", x_, "dy", dy.typestr, "the dtype of dy", x);
        shape_is("x", x, {B, C});
        if (C < 1)
          throw py::value_error("dy: expected at least one column, received shape " + shape_str(dy));
        vec("saved[0] (mean)", mean_, "dy", kF64, B, false, kStatsWhy, mean);
        vec("saved[1] (rstd)", rstd_, "dy", kF64, B, false, kStatsWhy, rstd);
        Named ins = {{"dy", &dy}, {"x", &x}, {"saved[0]", &mean}, {"saved[1]", &rstd}};
        bool has_dw = false, has_db = false;
        const bool affine =
            affine_grads(w_, dw_, db_, accumulate, dy, C, ins, w, dw, db, has_dw, has_db);
        const bool has_dx = out_given("dx_out", dx_, "dy", dy.typestr, {B, C}, ins, dx);
        on_current_device({{"dy", &dy},
                           {"x", &x},
                           {"saved[0]", &mean},
                           {"saved[1]", &rstd},
                           {"weight", affine ? &w : nullptr},
                           {"dx_out", has_dx ? &dx : nullptr},
                           {"dweight_out", has_dw ? &dw : nullptr},
                           {"dbias_out", has_db ? &db : nullptr}});
        if (dry_run) return py::none();
        require_device();
        py::tuple grads = grad_outputs(empty, dy, B, C, affine, has_dx, dx_, dx, has_dw, dw_, dw,
                                       has_db, db_, db);
        py::object keep;
        void* ws = make_workspace(workspace, cuda::ln_backward_workspace_bytes(B, C), 8, keep);
        {
          py::gil_scoped_release nogil;
          cuda::layer_norm_backward(ptr_of(dy), ptr_of(x), static_cast<const double*>(ptr_of(mean)),
                                    static_cast<const double*>(ptr_of(rstd)),
                                    affine ? ptr_of(w) : nullptr, ptr_of(dx),
                                    affine ? ptr_of(dw) : nullptr, affine ? ptr_of(db) : nullptr,
                                    B, C, accumulate, dtype_of(dy), ws, as_stream(stream));
        }
        return grads;
      },
      py::arg("dy"), py::arg("x"), py::arg("mean"), py::arg("rstd"), py::arg("weight"),
      py::arg("dx_out"), py::arg("dweight_out"), py::arg("dbias_out"), py::arg("accumulate"),
      py::arg("empty"), py::arg("workspace"), py::arg("dry_run"), py::arg("stream"),
      "(dx, dweight, dbias) of layer normalization on the GPU (use "
      "fusedtrain.ops.layer_norm_backward).");
}

}  // namespace fusedtrain::bind

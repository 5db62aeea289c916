// _cuda_blas: the dense-layer kernels on the GPU, a module of their own
// because they need cuBLASLt, which _cuda (optimizers, losses, dropout) does
// not. The module imports without cuBLASLt (the library is opened at run
// time, see cuda/cublaslt_api.h); fusedtrain imports it at the first dense
// call on GPU arrays and calls load() with the paths where the
// nvidia-cublas wheel or a CUDA installation keeps libcublasLt.
//
// The checks and messages are those of bind/dense_bind.cpp, on
// __cuda_array_interface__ objects. As in _cuda's loss bindings, missing
// outputs come from the `empty` allocator and scratch from `workspace`,
// both called only after every check; dry_run=True returns after the checks.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <string>
#include <vector>

#include "bind/cuda_arrays.h"
#include "cuda/dense_cuda.h"

namespace py = pybind11;

namespace fusedtrain {
namespace bind {

namespace {

const char* const kFirstGpu = "a GPU array (an object with __cuda_array_interface__)";

Act act_from(int code) {
  if (code < int(Act::Identity) || code > int(Act::Softmax))
    throw py::value_error("activation: unknown activation code " + std::to_string(code));
  return Act(code);
}

// A 2-d C-contiguous float matrix argument, of dtype `typestr` (any float
// dtype when empty).
DevArray matrix(std::string_view name, py::handle h, std::string_view first,
                std::string_view typestr, bool writable) {
  DevArray a;
  parse(name, h, first.empty() ? std::string(kFirstGpu) : "a GPU array like " + first, a);
  if (typestr.empty()) {
    float_dtype(name, a);
  } else {
    same_dtype(name, a, typestr, "the dtype of " + first);
  }
  ndim_is(name, a, 2);
  contiguous(name, a, writable);
  if (a.shape[0] > INT_MAX || a.shape[1] > INT_MAX)
    throw py::value_error(name +
                          ": dimensions above 2^31 - 1 are not supported by the BLAS, received " +
                          shape_str(a));
  return a;
}

py::tuple shape_tuple(int64_t rows, int64_t cols) {
  if (cols < 0) return py::make_tuple(rows);
  return py::make_tuple(rows, cols);
}

// An output: the given array checked against its expected shape (returned
// in `a`, the object in `o`), or none yet (allocated after all checks).
bool given_output(std::string_view name, py::handle h, std::string_view first,
                  std::string_view typestr, int64_t rows, int64_t cols, DevArray& a) {
  if (h.is_none()) return false;
  parse(name, h, "a GPU array like " + first, a);
  // "of x" in the backward pass too (x has dy's dtype), as bind/dense_bind.cpp says it
  same_dtype(name, a, typestr, "the dtype of x");
  if (cols < 0) {
    shape_is(name, a, {rows});
  } else {
    shape_is(name, a, {rows, cols});
  }
  contiguous(name, a, true);
  return true;
}

py::object allocate(py::handle empty, const char* name, int64_t rows, int64_t cols,
                    std::string_view typestr, DevArray& a) {
  return make_output(empty, name, shape_tuple(rows, cols), typestr, a);
}

void require_cublaslt() {
  if (!cuda::cublaslt_loaded())
    throw std::runtime_error(
        "fusedtrain._cuda_blas: cuBLASLt (libcublasLt.so.13) is not loaded; dense layers on the "
        "GPU need it: pip install \"fusedtrain[cuda]\" (the nvidia-cublas wheel)");
}

}  // namespace

void bind_cuda_dense(py::module_& m) {
  m.def(
      "dense_forward",
      [](py::handle x_h, py::handle w_h, py::handle b_h, py::handle y_h, int act_code,
         double slope, py::handle empty, py::handle workspace, bool dry_run,
         uintptr_t stream) -> py::object {
        const Act act = act_from(act_code);
        // x is (B, in), w is (in, out), b is (out,), y is (B, out)
        const DevArray x = matrix("x", x_h, "", "", false);
        const DevArray w = matrix("w", w_h, "x", x.typestr, false);
        const int64_t B = x.shape[0], in = x.shape[1], out = w.shape[1];
        if (w.shape[0] != in)
          throw py::value_error("w: expected shape (" + std::to_string(in) +
                                ", out) to match x.shape[1] = " + std::to_string(in) +
                                ", received " + shape_str(w));
        DevArray b, y, z;
        const bool has_b = !b_h.is_none();
        if (has_b) {
          parse("b", b_h, "a GPU array like x", b);
          same_dtype("b", b, x.typestr, "the dtype of x");
          shape_is("b", b, {out});
          contiguous("b", b, false);
        }
        const bool has_y = given_output("out", y_h, "x", x.typestr, B, out, y);
        if (has_y) {
          disjoint("out", y, "x", x);
          disjoint("out", y, "w", w);
          if (has_b) disjoint("out", y, "b", b);
        }
        on_current_device({{"x", &x}, {"w", &w}, {"b", has_b ? &b : nullptr},
                           {"out", has_y ? &y : nullptr}});
        if (dry_run) return py::none();
        require_cublaslt();
        require_device();
        py::object y_o = py::reinterpret_borrow<py::object>(y_h);
        if (!has_y) y_o = allocate(empty, "out", B, out, x.typestr, y);
        py::object z_o = py::none();
        if (saved_of(act) == Saved::PreActivation) z_o = allocate(empty, "saved", B, out, x.typestr, z);
        py::object keep;
        cuda::DenseForwardArgs a;
        a.x = ptr_of(x);
        a.w = ptr_of(w);
        a.b = has_b ? ptr_of(b) : nullptr;
        a.y = ptr_of(y);
        a.z = z_o.is_none() ? nullptr : ptr_of(z);
        a.B = B;
        a.in = in;
        a.out = out;
        a.act = act;
        a.slope = slope;
        a.workspace = make_workspace(workspace, cuda::dense_workspace_bytes(B, out, false), 256, keep);
        {
          py::gil_scoped_release nogil;
          cuda::dense_forward(a, dtype_of(x), as_stream(stream));
        }
        return py::make_tuple(y_o, z_o);
      },
      py::arg("x"), py::arg("w"), py::arg("b"), py::arg("out"), py::arg("act_code"),
      py::arg("slope"), py::arg("empty"), py::arg("workspace"), py::arg("dry_run"),
      py::arg("stream"),
      "y = act(x @ w + b) on the GPU (use fusedtrain.ops.dense_forward).");

  m.def(
      "dense_backward",
      [](py::handle dy_h, py::handle x_h, py::handle w_h, py::handle saved_h, int act_code,
         double slope, bool need_dx, py::handle dw_h, py::handle db_h, bool accumulate,
         py::handle dx_h, py::handle ws_h, py::handle empty, py::handle workspace, bool dry_run,
         uintptr_t stream) -> py::object {
        const Act act = act_from(act_code);
        // dy is (B, out), x (B, in), w (in, out), saved (B, out)
        const DevArray dy = matrix("dy", dy_h, "", "", false);
        std::string_view ts = dy.typestr;
        const DevArray x = matrix("x", x_h, "dy", ts, false);
        const DevArray w = matrix("w", w_h, "dy", ts, false);
        const int64_t B = dy.shape[0], out = dy.shape[1], in = x.shape[1];
        if (x.shape[0] != B)
          throw py::value_error("x: expected " + std::to_string(B) +
                                " rows (dy.shape[0]), received shape " + shape_str(x));
        shape_is("w", w, {in, out});
        DevArray saved;
        const bool has_saved = saved_of(act) != Saved::Nothing;
        if (has_saved) {
          if (saved_h.is_none())
            throw py::value_error("saved: required for this activation (pass what dense_forward "
                                  "returned); received None");
          saved = matrix("saved", saved_h, "dy", ts, false);
          shape_is("saved", saved, {B, out});
        }
        if (accumulate && (dw_h.is_none() || db_h.is_none()))
          throw py::value_error(std::string(dw_h.is_none() ? "dw_out" : "db_out") +
                                ": required when accumulate=True; received None");
        DevArray dw, db, dx, dz;
        const bool has_dw = given_output("dw_out", dw_h, "dy", ts, in, out, dw);
        const bool has_db = given_output("db_out", db_h, "dy", ts, out, -1, db);
        std::vector<std::pair<const char*, const DevArray*>> inputs = {
            {"dy", &dy}, {"x", &x}, {"w", &w}};
        if (has_saved) inputs.push_back({"saved", &saved});
        for (const auto& [on, o] : {std::pair<const char*, const DevArray*>{"dw_out", &dw},
                                    {"db_out", &db}}) {
          if ((o == &dw && !has_dw) || (o == &db && !has_db)) continue;
          for (const auto& [name, arr] : inputs) disjoint(on, *o, name, *arr);
        }
        if (has_dw && has_db) disjoint("dw_out", dw, "db_out", db);
        if (has_dw) inputs.push_back({"dw_out", &dw});
        if (has_db) inputs.push_back({"db_out", &db});
        bool has_dx = false;
        if (need_dx) {
          has_dx = given_output("dx_out", dx_h, "dy", ts, B, in, dx);
          if (has_dx) {
            for (const auto& [name, arr] : inputs) disjoint("dx_out", dx, name, *arr);
            inputs.push_back({"dx_out", &dx});
          }
        } else if (!dx_h.is_none()) {
          throw py::value_error("dx_out: given with need_dx=False; pass one or the other");
        }
        bool has_dz = false;
        if (act != Act::Identity) {
          has_dz = given_output("workspace", ws_h, "dy", ts, B, out, dz);
          if (has_dz)
            for (const auto& [name, arr] : inputs) disjoint("workspace", dz, name, *arr);
        }
        on_current_device({{"dy", &dy}, {"x", &x}, {"w", &w},
                           {"saved", has_saved ? &saved : nullptr},
                           {"dw_out", has_dw ? &dw : nullptr}, {"db_out", has_db ? &db : nullptr},
                           {"dx_out", has_dx ? &dx : nullptr},
                           {"workspace", has_dz ? &dz : nullptr}});
        if (dry_run) return py::none();
        require_cublaslt();
        require_device();
        py::object dw_o = py::reinterpret_borrow<py::object>(dw_h);
        py::object db_o = py::reinterpret_borrow<py::object>(db_h);
        py::object dx_o = py::none(), dz_o;
        if (!has_dw) dw_o = allocate(empty, "dw_out", in, out, ts, dw);
        if (!has_db) db_o = allocate(empty, "db_out", out, -1, ts, db);
        if (need_dx) dx_o = has_dx ? py::reinterpret_borrow<py::object>(dx_h)
                                   : allocate(empty, "dx_out", B, in, ts, dx);
        if (act != Act::Identity && !has_dz) dz_o = allocate(empty, "workspace", B, out, ts, dz);
        py::object keep;
        cuda::DenseBackwardArgs a;
        a.dy = ptr_of(dy);
        a.x = ptr_of(x);
        a.w = ptr_of(w);
        a.saved = has_saved ? ptr_of(saved) : nullptr;
        a.dz = act != Act::Identity ? ptr_of(dz) : nullptr;
        a.dx = need_dx ? ptr_of(dx) : nullptr;
        a.dw = ptr_of(dw);
        a.db = ptr_of(db);
        a.B = B;
        a.in = in;
        a.out = out;
        a.act = act;
        a.slope = slope;
        a.accumulate = accumulate;
        a.workspace = make_workspace(workspace, cuda::dense_workspace_bytes(B, out, true), 256, keep);
        {
          py::gil_scoped_release nogil;
          cuda::dense_backward(a, dtype_of(dy), as_stream(stream));
        }
        return py::make_tuple(dx_o, dw_o, db_o);
      },
      py::arg("dy"), py::arg("x"), py::arg("w"), py::arg("saved"), py::arg("act_code"),
      py::arg("slope"), py::arg("need_dx"), py::arg("dw_out"), py::arg("db_out"),
      py::arg("accumulate"), py::arg("dx_out"), py::arg("dz_workspace"), py::arg("empty"),
      py::arg("workspace"), py::arg("dry_run"), py::arg("stream"),
      "dx, dw, db of a dense layer on the GPU (use fusedtrain.ops.dense_backward).");
}

}  // namespace bind
}  // namespace fusedtrain

PYBIND11_MODULE(_cuda_blas, m) {
  namespace cuda = fusedtrain::cuda;
  m.doc() = "fusedtrain dense-layer kernels on the GPU (cuBLASLt, loaded at run time)";
  m.def(
      "load", [](const std::vector<std::string>& candidates) { return cuda::load_cublaslt(candidates); },
      py::arg("candidates"),
      "Open libcublasLt from the first path that works ('' = the loader's own search for "
      "libcublasLt.so.13); returns '' on success, else why each failed.");
  m.def("loaded", &cuda::cublaslt_loaded, "Whether cuBLASLt is loaded.");
  m.def("library_path", &cuda::cublaslt_path, "The libcublasLt file in use ('' when none).");
  m.def(
      "workspace_bytes",
      [](int64_t B, int64_t out, bool backward) { return cuda::dense_workspace_bytes(B, out, backward); },
      py::arg("B"), py::arg("out"), py::arg("backward"),
      "Scratch bytes of one dense call: cuBLASLt's, plus the bias-gradient partial sums.");
  m.def(
      "gemm_plan",
      [](std::string_view which, int64_t B, int64_t in, int64_t out) {
        const cuda::DenseGemm g = which == "forward" ? cuda::DenseGemm::Forward
                                  : which == "dw"    ? cuda::DenseGemm::Dw
                                  : which == "dx"    ? cuda::DenseGemm::Dx
                                                     : throw py::value_error("which: forward, dw or dx");
        const cuda::GemmPlan p = cuda::gemm_plan(g, B, in, out);
        auto name = [](cuda::Operand o) {
          return o == cuda::Operand::X ? "x" : o == cuda::Operand::W ? "w" : "dz";
        };
        py::dict d;
        d["a"] = name(p.a);
        d["b"] = name(p.b);
        d["ta"] = p.ta;
        d["tb"] = p.tb;
        d["m"] = p.m;
        d["n"] = p.n;
        d["k"] = p.k;
        d["lda"] = p.lda;
        d["ldb"] = p.ldb;
        d["ldd"] = p.ldd;
        return d;
      },
      py::arg("which"), py::arg("B"), py::arg("in_features"), py::arg("out_features"),
      "The column-major cuBLASLt product behind a row-major dense GEMM (for the host tests).");
  fusedtrain::bind::bind_cuda_dense(m);
}

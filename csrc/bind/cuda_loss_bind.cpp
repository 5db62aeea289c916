// _cuda bindings of the loss and dropout kernels, the GPU twins of
// bind/loss_bind.cpp with the same checks and messages. Arrays are objects
// with __cuda_array_interface__ (CuPy arrays, torch CUDA tensors); options
// arrive validated from fusedtrain.ops (python/fusedtrain/_ops_loss.py).
//
// The module allocates nothing itself: missing outputs come from `empty`
// (a Python callable (shape, typestr) -> GPU array; fusedtrain passes
// cupy.empty on the current device) and the reductions' scratch from
// `workspace` (a callable nbytes -> GPU byte array; fusedtrain passes a
// buffer cached per device and stream). Both are called only after every
// check has passed; dry_run=True returns right after the checks (what the
// CPU-run tests use on stand-in objects). `stream` is the cudaStream_t to
// launch on, as an integer.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bind/cuda_arrays.h"
#include "cuda/loss_cuda.h"

namespace py = pybind11;

namespace fusedtrain::bind {

namespace {

const char* const kFirstGpu = "a GPU array (an object with __cuda_array_interface__)";

std::string like(std::string_view first) { return "a GPU array like " + first; }

Reduction parse_reduction(std::string_view r) {
  if (r == "mean") return Reduction::Mean;
  if (r == "sum") return Reduction::Sum;
  if (r == "none") return Reduction::None;
  throw py::value_error("reduction must be one of 'mean', 'sum', 'none'; received '" + r + "'");
}

void check_p(double p) {
  if (!(p >= 0.0 && p < 1.0))
    throw py::value_error("p must be in [0, 1); received " + std::to_string(p));
}

py::tuple shape_tuple(std::initializer_list<int64_t> dims) {
  py::tuple t(dims.size());
  size_t k = 0;
  for (int64_t d : dims) t[k++] = py::int_(d);
  return t;
}
py::tuple shape_tuple(const DevArray& a) {
  py::tuple t(size_t(a.ndim));
  for (int d = 0; d < a.ndim; ++d) t[size_t(d)] = py::int_(a.shape[d]);
  return t;
}

py::object reduced_or(Reduction r, const cuda::LossResult& res, const py::object& per_item) {
  if (r == Reduction::None) return per_item;
  return py::float_(res.loss);
}

// Labels: any integer dtype, little-endian or single-byte ('<i8', '|u1', ...).
cuda::LabelDesc label_desc(const DevArray& labels) {
  std::string_view ts = labels.typestr;
  const int64_t size = typestr_itemsize(ts);
  const bool order_ok = ts.size() >= 3 && (ts[0] == '<' || (ts[0] == '|' && size == 1));
  if (!order_ok || (ts[1] != 'i' && ts[1] != 'u') ||
      !(size == 1 || size == 2 || size == 4 || size == 8))
    throw py::type_error("labels: expected an integer dtype (int32, int64, ...), received " +
                         dtype_name(ts));
  return cuda::LabelDesc{ptr_of(labels), int(size), ts[1] == 'i'};
}

// BCE with logits and MSE: two same-shape inputs.
using ElementwiseLaunch = cuda::LossResult (*)(const void*, const void*, void*, void*, int64_t,
                                               Reduction, cuda::DType, void*, void*);
py::object elementwise_loss(const char* in_name, py::handle in_h, const char* ref_name,
                            py::handle ref_h, std::string_view reduction, py::handle empty,
                            py::handle workspace, bool dry_run, uintptr_t stream,
                            ElementwiseLaunch launch) {
  const Reduction red = parse_reduction(reduction);
  DevArray in, ref;
  parse(in_name, in_h, kFirstGpu, in);
  float_dtype(in_name, in);
  contiguous(in_name, in, false);
  parse(ref_name, ref_h, like(in_name), ref);
  same_dtype(ref_name, ref, in.typestr, std::string("the dtype of ") + in_name);
  contiguous(ref_name, ref, false);
  same_shape_as(ref_name, ref, in_name, in);
  on_current_device({{in_name, &in}, {ref_name, &ref}});
  if (dry_run) return py::none();
  require_device();
  DevArray grad, loss;
  py::object grad_o = make_output(empty, "grad", shape_tuple(in), in.typestr, grad);
  py::object loss_o = py::none();
  if (red == Reduction::None) loss_o = make_output(empty, "loss", shape_tuple(in), in.typestr, loss);
  py::object keep;
  void* ws = make_workspace(workspace, cuda::elementwise_workspace_bytes(in.numel), 8, keep);
  cuda::LossResult res;
  {
    py::gil_scoped_release nogil;
    res = launch(ptr_of(in), ptr_of(ref), ptr_of(grad),
                 red == Reduction::None ? ptr_of(loss) : nullptr, in.numel, red, dtype_of(in), ws,
                 as_stream(stream));
  }
  return py::make_tuple(reduced_or(red, res, loss_o), grad_o);
}

}  // namespace

void bind_cuda_loss(py::module_& m) {
  m.def(
      "softmax_cross_entropy",
      [](py::handle logits_h, py::handle labels_h, py::handle weight_h, py::handle out_h,
         int64_t ignore_index, double label_smoothing, std::string_view reduction,
         py::handle empty, py::handle workspace, bool dry_run, uintptr_t stream) -> py::object {
        const Reduction red = parse_reduction(reduction);
        DevArray logits, labels, weight, out;
        parse("logits", logits_h, kFirstGpu, logits);
        float_dtype("logits", logits);
        contiguous("logits", logits, false);
        ndim_is("logits", logits, 2);
        const int64_t n = logits.shape[0], c = logits.shape[1];
        if (c < 1)
          throw py::value_error("logits: expected shape (N, C) with C >= 1 classes, received " +
                                shape_str(logits));
        parse("labels", labels_h, like("logits"), labels);
        const cuda::LabelDesc lv = label_desc(labels);
        contiguous("labels", labels, false);
        shape_is("labels", labels, {n});
        const bool has_weight = !weight_h.is_none();
        if (has_weight) {
          parse("weight", weight_h, like("logits"), weight);
          same_dtype("weight", weight, logits.typestr, "the dtype of logits");
          contiguous("weight", weight, false);
          shape_is("weight", weight, {c});
        }
        const bool has_out = !out_h.is_none();
        if (has_out) {
          parse("out", out_h, like("logits"), out);
          same_dtype("out", out, logits.typestr, "the dtype of logits");
          contiguous("out", out, true);
          shape_is("out", out, {n, c});
          // out may be logits itself (the gradient written in place), nothing else
          if (out.ptr != logits.ptr) disjoint("out", out, "logits", logits);
          disjoint("out", out, "labels", labels);
          if (has_weight) disjoint("out", out, "weight", weight);
        }
        on_current_device({{"logits", &logits},
                           {"labels", &labels},
                           {"weight", has_weight ? &weight : nullptr},
                           {"out", has_out ? &out : nullptr}});
        if (dry_run) return py::none();
        require_device();

        py::object out_o = py::reinterpret_borrow<py::object>(out_h);
        if (!has_out) out_o = make_output(empty, "out", shape_tuple({n, c}), logits.typestr, out);
        const bool per_row = red == Reduction::None;
        DevArray rows;
        py::object rows_o = py::none();
        if (per_row) rows_o = make_output(empty, "loss", shape_tuple({n}), logits.typestr, rows);
        py::object keep;
        cuda::CeLaunch a;
        a.logits = ptr_of(logits);
        a.out = ptr_of(out);
        a.weight = has_weight ? ptr_of(weight) : nullptr;
        a.loss_rows = per_row ? ptr_of(rows) : nullptr;
        a.labels = lv;
        a.n = n;
        a.c = c;
        a.ignore_index = ignore_index;
        a.label_smoothing = label_smoothing;
        a.reduction = red;
        a.workspace = make_workspace(workspace, cuda::ce_workspace_bytes(n), 8, keep);
        const cuda::DType dt = dtype_of(logits);
        cuda::LossResult res;
        std::string bad_label;
        {
          py::gil_scoped_release nogil;
          res = cuda::softmax_cross_entropy(a, dt, as_stream(stream));
          if (res.bad_row >= 0) bad_label = cuda::label_text(lv, res.bad_row, as_stream(stream));
        }
        if (res.bad_row >= 0)
          throw py::value_error("labels: expected class indices in [0, " + std::to_string(c) +
                                ") or ignore_index (" + std::to_string(ignore_index) +
                                "), received " + bad_label + " at row " +
                                std::to_string(res.bad_row));
        return py::make_tuple(reduced_or(red, res, rows_o), out_o);
      },
      py::arg("logits"), py::arg("labels"), py::arg("weight"), py::arg("out"),
      py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("reduction"), py::arg("empty"),
      py::arg("workspace"), py::arg("dry_run"), py::arg("stream"),
      "Fused softmax cross-entropy forward + backward on the GPU (use "
      "fusedtrain.ops.softmax_cross_entropy).");

  m.def(
      "bce_with_logits",
      [](py::handle logits, py::handle targets, std::string_view reduction, py::handle empty,
         py::handle workspace, bool dry_run, uintptr_t stream) {
        return elementwise_loss("logits", logits, "targets", targets, reduction, empty, workspace,
                                dry_run, stream, cuda::bce_with_logits);
      },
      py::arg("logits"), py::arg("targets"), py::arg("reduction"), py::arg("empty"),
      py::arg("workspace"), py::arg("dry_run"), py::arg("stream"),
      "Binary cross-entropy with logits on the GPU (use fusedtrain.ops.bce_with_logits).");

  m.def(
      "mse",
      [](py::handle pred, py::handle target, std::string_view reduction, py::handle empty,
         py::handle workspace, bool dry_run, uintptr_t stream) {
        return elementwise_loss("pred", pred, "target", target, reduction, empty, workspace,
                                dry_run, stream, cuda::mse);
      },
      py::arg("pred"), py::arg("target"), py::arg("reduction"), py::arg("empty"),
      py::arg("workspace"), py::arg("dry_run"), py::arg("stream"),
      "Mean squared error on the GPU (use fusedtrain.ops.mse).");

  m.def(
      "dropout",
      [](py::handle x_h, double p, uint64_t seed, uint64_t offset, py::handle out_h,
         py::handle mask_out_h, py::handle empty, bool dry_run, uintptr_t stream) -> py::object {
        check_p(p);
        DevArray x, y, mask;
        parse("x", x_h, kFirstGpu, x);
        float_dtype("x", x);
        contiguous("x", x, false);
        const bool has_out = !out_h.is_none(), has_mask = !mask_out_h.is_none();
        if (has_out) {
          parse("out", out_h, like("x"), y);
          same_dtype("out", y, x.typestr, "the dtype of x");
          same_shape_as("out", y, "x", x);
          contiguous("out", y, true);
        }
        if (has_mask) {
          parse("mask_out", mask_out_h, like("x"), mask);
          if (mask.typestr != "|b1")
            throw py::type_error("mask_out: expected dtype bool, received " +
                                 dtype_name(mask.typestr));
          same_shape_as("mask_out", mask, "x", x);
          contiguous("mask_out", mask, true);
          disjoint("mask_out", mask, "x", x);
          if (has_out) disjoint("mask_out", mask, "out", y);
        }
        if (has_out && y.ptr != x.ptr) disjoint("out", y, "x", x);
        on_current_device({{"x", &x},
                           {"out", has_out ? &y : nullptr},
                           {"mask_out", has_mask ? &mask : nullptr}});
        if (dry_run) return py::none();
        require_device();
        py::object y_o = py::reinterpret_borrow<py::object>(out_h);
        py::object mask_o = py::reinterpret_borrow<py::object>(mask_out_h);
        if (!has_out) y_o = make_output(empty, "out", shape_tuple(x), x.typestr, y);
        if (!has_mask) mask_o = make_output(empty, "mask_out", shape_tuple(x), "|b1", mask);
        {
          py::gil_scoped_release nogil;
          cuda::dropout(ptr_of(x), ptr_of(y), static_cast<uint8_t*>(ptr_of(mask)), x.numel, p,
                        seed, offset, dtype_of(x), as_stream(stream));
        }
        return py::make_tuple(y_o, mask_o);
      },
      py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("offset"), py::arg("out"),
      py::arg("mask_out"), py::arg("empty"), py::arg("dry_run"), py::arg("stream"),
      "Dropout with the Philox4x32-10 mask of the CPU path, on the GPU (use "
      "fusedtrain.ops.dropout).");

  m.def(
      "dropout_backward",
      [](py::handle dy_h, py::handle mask_h, double p, py::handle out_h, py::handle empty,
         bool dry_run, uintptr_t stream) -> py::object {
        check_p(p);
        DevArray dy, mask, dx;
        parse("dy", dy_h, kFirstGpu, dy);
        float_dtype("dy", dy);
        contiguous("dy", dy, false);
        parse("mask", mask_h, like("dy"), mask);
        if (mask.typestr != "|b1" && mask.typestr != "|u1")
          throw py::type_error(
              "mask: expected dtype bool or uint8 (as dropout returns), received " +
              dtype_name(mask.typestr));
        contiguous("mask", mask, false);
        same_shape_as("mask", mask, "dy", dy);
        const bool has_out = !out_h.is_none();
        if (has_out) {  // may be dy itself
          parse("out", out_h, like("dy"), dx);
          same_dtype("out", dx, dy.typestr, "the dtype of dy");
          same_shape_as("out", dx, "dy", dy);
          contiguous("out", dx, true);
          disjoint("out", dx, "mask", mask);
          if (dx.ptr != dy.ptr) disjoint("out", dx, "dy", dy);
        }
        on_current_device({{"dy", &dy}, {"mask", &mask}, {"out", has_out ? &dx : nullptr}});
        if (dry_run) return py::none();
        require_device();
        py::object dx_o = py::reinterpret_borrow<py::object>(out_h);
        if (!has_out) dx_o = make_output(empty, "out", shape_tuple(dy), dy.typestr, dx);
        {
          py::gil_scoped_release nogil;
          cuda::dropout_backward(ptr_of(dy), static_cast<const uint8_t*>(ptr_of(mask)),
                                 ptr_of(dx), dy.numel, p, dtype_of(dy), as_stream(stream));
        }
        return dx_o;
      },
      py::arg("dy"), py::arg("mask"), py::arg("p"), py::arg("out"), py::arg("empty"),
      py::arg("dry_run"), py::arg("stream"),
      "Dropout backward on the GPU: dy * mask / (1 - p) (use fusedtrain.ops.dropout_backward).");

  // host-side launch arithmetic, for the CPU-run tests
  m.def("ce_workspace_bytes", [](int64_t n) { return cuda::ce_workspace_bytes(n); },
        py::arg("n"), "Workspace bytes softmax_cross_entropy needs for n rows.");
  m.def("elementwise_workspace_bytes",
        [](int64_t n) { return cuda::elementwise_workspace_bytes(n); }, py::arg("n"),
        "Workspace bytes bce_with_logits / mse need for n elements.");
  m.def(
      "label_bytes_text",
      [](py::bytes raw, bool is_signed) {
        const std::string b = raw;
        if (!(b.size() == 1 || b.size() == 2 || b.size() == 4 || b.size() == 8))
          throw py::value_error("raw: expected 1, 2, 4 or 8 bytes");
        return cuda::label_bytes_text(reinterpret_cast<const unsigned char*>(b.data()),
                                      int(b.size()), is_signed);
      },
      py::arg("raw"), py::arg("is_signed"),
      "A bad label's bytes as the error message prints them (for the host tests).");
  m.def("grid_for", [](int64_t work, int64_t per_block) { return cuda::grid_for(work, per_block); },
        py::arg("work"), py::arg("per_block"),
        "Blocks of a grid-stride launch over `work` items, `per_block` per block per sweep.");
}

}  // namespace fusedtrain::bind

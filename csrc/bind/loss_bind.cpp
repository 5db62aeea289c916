// Bindings of the loss and dropout kernels. Options arrive validated from
// fusedtrain.ops (python/fusedtrain/_ops_loss.py); the arrays are validated
// here with the bind/arrays.h checks, outputs are allocated, and only then is
// the GIL released around the kernel. A call that raises has written nothing:
// the cross-entropy labels are checked in a pass that writes nothing but a
// private index array, before the fused pass writes the gradient.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bind/arrays.h"
#include "cpu/loss_cpu.h"
#include "fusedtrain/philox.h"

namespace py = pybind11;

namespace fusedtrain::bind {

namespace {

using cpu::DType;

DType dtype_of(int num) { return num == f32_num() ? DType::F32 : DType::F64; }

Reduction parse_reduction(std::string_view r) {
  if (r == "mean") return Reduction::Mean;
  if (r == "sum") return Reduction::Sum;
  if (r == "none") return Reduction::None;
  throw py::value_error("reduction must be one of 'mean', 'sum', 'none'; received '" + r + "'");
}

std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

// a.shape must equal ref.shape (`ref_name` says whose shape that is).
void same_shape(std::string_view name, const py::array& a, std::string_view ref_name,
                const py::array& ref) {
  if (shape_of(a) != shape_of(ref))
    throw py::value_error(name + ": expected shape " + shape_str(ref) + " (the shape of " +
                          ref_name + "), received " + shape_str(a));
}

// A float32/float64 C-contiguous input; returns its dtype number.
int float_input(std::string_view name, const py::array& a) {
  const int num = float_dtype(name, a);
  contiguous(name, a, false);
  return num;
}

// An input of the same dtype and shape as `ref`.
void matching_input(std::string_view name, const py::array& a, int num,
                    std::string_view ref_name, const py::array& ref) {
  same_dtype(name, a, num, "the dtype of " + ref_name);
  contiguous(name, a, false);
  same_shape(name, a, ref_name, ref);
}

// Labels: any integer dtype in native byte order.
cpu::LabelView label_view(const py::array& labels) {
  const py::dtype dt = labels.dtype();
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if ((kind != 'i' && kind != 'u') || !native_order(labels) ||
      !(size == 1 || size == 2 || size == 4 || size == 8))
    throw py::type_error("labels: expected an integer dtype (int32, int64, ...), received " +
                         dtype_str(labels));
  return cpu::LabelView{labels.data(), int(size), kind == 'i'};
}

py::object reduced_or(Reduction r, double total, const py::array& per_item) {
  if (r == Reduction::None) return per_item;
  return py::float_(total);
}

// A loss of two same-shape inputs (BCE with logits, MSE): checks, outputs,
// the kernel without the GIL; returns (loss, d loss / d input).
using ElementwiseLoss = double (*)(const void*, const void*, void*, void*, int64_t, Reduction,
                                   cpu::DType);
py::tuple elementwise_loss(const char* in_name, py::handle in_h, const char* ref_name,
                           py::handle ref_h, std::string_view reduction, ElementwiseLoss kernel) {
  const Reduction red = parse_reduction(reduction);
  const py::array in = as_array(in_name, in_h);
  const int num = float_input(in_name, in);
  const py::array ref = as_array(ref_name, ref_h);
  matching_input(ref_name, ref, num, in_name, in);
  py::array grad(in.dtype(), shape_of(in));
  py::array loss;
  if (red == Reduction::None) loss = py::array(in.dtype(), shape_of(in));
  const void* x = in.data();
  const void* t = ref.data();
  void* g = grad.mutable_data();
  void* l = red == Reduction::None ? loss.mutable_data() : nullptr;
  const int64_t n = in.size();
  double total;
  {
    py::gil_scoped_release nogil;
    total = kernel(x, t, g, l, n, red, dtype_of(num));
  }
  return py::make_tuple(reduced_or(red, total, loss), grad);
}

}  // namespace

void bind_loss(py::module_& m) {
  m.def(
      "softmax_cross_entropy",
      [](py::handle logits_h, py::handle labels_h, py::handle weight_h, py::handle out_h,
         int64_t ignore_index, double label_smoothing, std::string_view reduction) {
        const Reduction red = parse_reduction(reduction);
        const py::array logits = as_array("logits", logits_h);
        const int num = float_input("logits", logits);
        ndim_is("logits", logits, 2);
        const int64_t n = logits.shape(0), c = logits.shape(1);
        if (c < 1)
          throw py::value_error("logits: expected shape (N, C) with C >= 1 classes, received " +
                                shape_str(logits));

        const py::array labels = as_array("labels", labels_h);
        const cpu::LabelView lv = label_view(labels);
        contiguous("labels", labels, false);
        shape_is("labels", labels, {py::ssize_t(n)});

        const bool has_weight = !weight_h.is_none();
        py::array weight;  // (default-constructed: an empty array, unused)
        if (has_weight) {
          weight = as_array("weight", weight_h);
          same_dtype("weight", weight, num, "the dtype of logits");
          contiguous("weight", weight, false);
          shape_is("weight", weight, {py::ssize_t(c)});
        }

        py::array out;
        if (out_h.is_none()) {
          out = py::array(logits.dtype(), shape_of(logits));
        } else {
          out = as_array("out", out_h);
          same_dtype("out", out, num, "the dtype of logits");
          contiguous("out", out, true);
          shape_is("out", out, {py::ssize_t(n), py::ssize_t(c)});
          // out may be logits itself (the gradient written in place), nothing else
          if (out.data() != logits.data()) disjoint("out", out, "logits", logits);
          disjoint("out", out, "labels", labels);
          if (has_weight) disjoint("out", out, "weight", weight);
        }
        const bool per_row = red == Reduction::None;
        py::array loss_rows;
        if (per_row) loss_rows = py::array(logits.dtype(), std::vector<py::ssize_t>{n});

        cpu::CeArgs a;
        a.logits = logits.data();
        a.out = out.mutable_data();
        a.weight = has_weight ? weight.data() : nullptr;
        a.loss_rows = per_row ? loss_rows.mutable_data() : nullptr;
        a.n = n;
        a.c = c;
        a.ignore_index = ignore_index;
        a.label_smoothing = label_smoothing;
        a.reduction = red;
        const DType dt = dtype_of(num);
        std::vector<int64_t> index(static_cast<size_t>(n));
        int64_t bad;
        double total = 0.0;
        {
          py::gil_scoped_release nogil;
          double denom = 0.0;
          bad = cpu::ce_prepare(lv, n, c, ignore_index, a.weight, dt, index.data(), &denom);
          if (bad < 0) total = cpu::ce_forward_backward(a, index.data(), denom, dt);
        }
        if (bad >= 0)
          throw py::value_error(
              "labels: expected class indices in [0, " + std::to_string(c) +
              ") or ignore_index (" + std::to_string(ignore_index) + "), received " +
              std::string(py::str(labels[py::int_(bad)])) + " at row " + std::to_string(bad));
        return py::make_tuple(reduced_or(red, total, loss_rows), out);
      },
      py::arg("logits"), py::arg("labels"), py::arg("weight"), py::arg("out"),
      py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("reduction"),
      "Fused softmax cross-entropy forward + backward (use "
      "fusedtrain.ops.softmax_cross_entropy).");

  m.def(
      "bce_with_logits",
      [](py::handle logits, py::handle targets, std::string_view reduction) {
        return elementwise_loss("logits", logits, "targets", targets, reduction,
                                cpu::bce_with_logits);
      },
      py::arg("logits"), py::arg("targets"), py::arg("reduction"),
      "Binary cross-entropy with logits, forward + backward (use "
      "fusedtrain.ops.bce_with_logits).");

  m.def(
      "mse",
      [](py::handle pred, py::handle target, std::string_view reduction) {
        return elementwise_loss("pred", pred, "target", target, reduction, cpu::mse);
      },
      py::arg("pred"), py::arg("target"), py::arg("reduction"),
      "Mean squared error, forward + backward (use fusedtrain.ops.mse).");

  m.def(
      "dropout",
      [](py::handle x_h, double p, uint64_t seed, uint64_t offset, py::handle out_h,
         py::handle mask_out_h) {
        if (!(p >= 0.0 && p < 1.0))
          throw py::value_error("p must be in [0, 1); received " + std::to_string(p));
        const py::array x = as_array("x", x_h);
        const int num = float_input("x", x);
        // outputs: given (reused across batches; out may be x itself) or new
        py::array y = out_h.is_none() ? py::array(x.dtype(), shape_of(x)) : as_array("out", out_h);
        if (!out_h.is_none()) {
          same_dtype("out", y, num, "the dtype of x");
          same_shape("out", y, "x", x);
          contiguous("out", y, true);
        }
        py::array mask = mask_out_h.is_none() ? py::array(py::dtype::of<bool>(), shape_of(x))
                                              : as_array("mask_out", mask_out_h);
        if (!mask_out_h.is_none()) {
          if (mask.dtype().kind() != 'b')
            throw py::type_error("mask_out: expected dtype bool, received " + dtype_str(mask));
          same_shape("mask_out", mask, "x", x);
          contiguous("mask_out", mask, true);
          disjoint("mask_out", mask, "x", x);
          disjoint("mask_out", mask, "out", y);
        }
        if (!out_h.is_none() && y.data() != x.data()) disjoint("out", y, "x", x);
        const void* xp = x.data();
        void* yp = y.mutable_data();
        auto* mp = static_cast<uint8_t*>(mask.mutable_data());
        const int64_t n = x.size();
        {
          py::gil_scoped_release nogil;
          cpu::dropout(xp, yp, mp, n, p, seed, offset, dtype_of(num));
        }
        return py::make_tuple(y, mask);
      },
      py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("offset"), py::arg("out") = py::none(),
      py::arg("mask_out") = py::none(),
      "Dropout with a Philox4x32-10 mask (use fusedtrain.ops.dropout).");

  m.def(
      "dropout_backward",
      [](py::handle dy_h, py::handle mask_h, double p, py::handle out_h) {
        if (!(p >= 0.0 && p < 1.0))
          throw py::value_error("p must be in [0, 1); received " + std::to_string(p));
        const py::array dy = as_array("dy", dy_h);
        const int num = float_input("dy", dy);
        const py::array mask = as_array("mask", mask_h);
        const char kind = mask.dtype().kind();
        if (!((kind == 'b' || kind == 'u') && mask.dtype().itemsize() == 1))
          throw py::type_error(
              "mask: expected dtype bool or uint8 (as dropout returns), received " +
              dtype_str(mask));
        contiguous("mask", mask, false);
        same_shape("mask", mask, "dy", dy);
        py::array dx = out_h.is_none() ? py::array(dy.dtype(), shape_of(dy)) : as_array("out", out_h);
        if (!out_h.is_none()) {  // may be dy itself
          same_dtype("out", dx, num, "the dtype of dy");
          same_shape("out", dx, "dy", dy);
          contiguous("out", dx, true);
          disjoint("out", dx, "mask", mask);
          if (dx.data() != dy.data()) disjoint("out", dx, "dy", dy);
        }
        const void* dyp = dy.data();
        const auto* mp = static_cast<const uint8_t*>(mask.data());
        void* dxp = dx.mutable_data();
        const int64_t n = dy.size();
        {
          py::gil_scoped_release nogil;
          cpu::dropout_backward(dyp, mp, dxp, n, p, dtype_of(num));
        }
        return dx;
      },
      py::arg("dy"), py::arg("mask"), py::arg("p"), py::arg("out") = py::none(),
      "Dropout backward: dy * mask / (1 - p) (use fusedtrain.ops.dropout_backward).");

  m.def(
      "philox4x32_10_",
      [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
        const Philox4 r = philox4x32_10(c0, c1, c2, c3, k0, k1);
        return py::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
      },
      py::arg("c0"), py::arg("c1"), py::arg("c2"), py::arg("c3"), py::arg("k0"), py::arg("k1"),
      "The shared Philox4x32-10 (fusedtrain/philox.h) on one counter and key, for the\n"
      "known-answer tests: returns its four output words.");
}

}  // namespace fusedtrain::bind

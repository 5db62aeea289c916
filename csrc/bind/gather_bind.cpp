// _core.take_rows: the training loop's batch gather (out = src[idx]) on the
// kernels' threads.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bind/arrays.h"
#include "cpu/gather_cpu.h"

namespace py = pybind11;

namespace fusedtrain::bind {

void bind_gather(py::module_& m) {
  m.def(
      "take_rows",
      [](py::handle src_, py::handle idx_, py::handle out_) {
        const py::array src = as_array("src", src_);
        const py::array idx = as_array("idx", idx_);
        py::array out = as_array("out", out_);
        contiguous("src", src, false);
        // rows are copied as bytes: references (object arrays) would not be counted
        const char kind = src.dtype().kind();
        if (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f' && kind != 'c')
          throw py::type_error("src: expected a numeric or bool dtype (rows are copied as bytes), "
                               "received " + dtype_str(src));
        if (src.ndim() < 1)
          throw py::value_error("src: expected an array of rows (ndim >= 1), received shape " +
                                shape_str(src));
        same_dtype("idx", idx, py::dtype::of<int64_t>().num(), "row indices");
        contiguous("idx", idx, false);
        ndim_is("idx", idx, 1);
        same_dtype("out", out, src.dtype().num(), "the dtype of src");
        contiguous("out", out, true);
        const py::ssize_t n = idx.shape(0);
        bool shape_ok = out.ndim() == src.ndim() && out.shape(0) == n;
        for (py::ssize_t d = 1; shape_ok && d < src.ndim(); ++d)
          shape_ok = out.shape(d) == src.shape(d);
        if (!shape_ok) {
          std::string want = "(" + std::to_string(n);
          for (py::ssize_t d = 1; d < src.ndim(); ++d) want += ", " + std::to_string(src.shape(d));
          want += src.ndim() == 1 ? ",)" : ")";
          throw py::value_error("out: expected shape " + want + " (len(idx),) + src.shape[1:], " +
                                "received " + shape_str(out));
        }
        disjoint("out", out, "src", src);
        disjoint("out", out, "idx", idx);
        const int64_t rows = src.shape(0);
        const int64_t* ix = static_cast<const int64_t*>(idx.data());
        for (py::ssize_t i = 0; i < n; ++i)  // every index checked before anything is written
          if (ix[i] < 0 || ix[i] >= rows)
            throw py::index_error("idx[" + std::to_string(i) + "]: expected a row index in [0, " +
                                  std::to_string(rows) + "), received " + std::to_string(ix[i]));
        const int64_t row_bytes = rows > 0 ? int64_t(src.nbytes()) / rows : 0;
        void* o = out.mutable_data();
        {
          py::gil_scoped_release nogil;
          cpu::take_rows(src.data(), row_bytes, ix, n, o);
        }
        return out;
      },
      py::arg("src"), py::arg("idx"), py::arg("out"),
      "out[i] = src[idx[i]] for the rows of a C-contiguous src (int64 indices in\n"
      "[0, len(src)), checked first); the copy runs on the kernels' threads. Returns out.");
}

}  // namespace fusedtrain::bind

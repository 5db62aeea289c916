"""fusedtrain: fused optimizer steps and training kernels for NumPy arrays.

The hot paths are C++ kernels (OpenMP, runtime SIMD dispatch) with CUDA
twins; see :mod:`fusedtrain.ops` for the functional in-place API and
:mod:`fusedtrain.optim` for optimizer objects.
"""

# Load the OpenBLAS that _core links against (found through its rpath in an
# installed tree; the import makes editable and in-tree builds find it too).
import scipy_openblas32 as _scipy_openblas32  # noqa: F401

from . import _core
from ._version import __version__
from .backend import (build_info, cuda_available, get_flush_denormal, get_num_threads,
                      set_flush_denormal, set_num_threads)
from . import amp, data, metrics, nn, ops, optim, reference, schedules, train

__all__ = [
    "__version__",
    "build_info",
    "cuda_available",
    "get_flush_denormal",
    "get_num_threads",
    "set_flush_denormal",
    "set_num_threads",
    "amp",
    "data",
    "metrics",
    "nn",
    "ops",
    "optim",
    "reference",
    "schedules",
    "train",
]

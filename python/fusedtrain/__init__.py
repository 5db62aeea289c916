"""fusedtrain: fused optimizer steps and training kernels for NumPy arrays.

The hot paths are C++ kernels (OpenMP, runtime SIMD dispatch) with CUDA
twins; see :mod:`fusedtrain.ops` for the functional in-place API and
:mod:`fusedtrain.optim` for optimizer objects.
"""

from . import _core
from ._version import __version__
from .backend import build_info, cuda_available, get_num_threads, set_num_threads
from . import ops, optim, reference

__all__ = [
    "__version__",
    "build_info",
    "cuda_available",
    "get_num_threads",
    "set_num_threads",
    "ops",
    "optim",
    "reference",
]

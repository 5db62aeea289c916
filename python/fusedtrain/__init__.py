"""fusedtrain: fused optimizer steps and training kernels for NumPy arrays
(and CuPy arrays or torch tensors on a GPU).

The hot paths are C++ kernels (OpenMP, runtime SIMD dispatch) with CUDA
twins. The package reads top-down, each layer using only those below it::

    cli                   the command line
    train, checkpoint     fit / evaluate / predict and the TrainState; files
    nn, optim, callbacks  layers and Sequential; optimizer objects; callbacks
    ops                   the functional, in-place kernels (one route to each)
    backend               CPU or GPU: _core, or an adapter over _cuda
    _core, _cuda          the compiled modules

:mod:`fusedtrain.torch` puts torch.optim's interface over :mod:`~fusedtrain.ops`;
:mod:`fusedtrain.reference` holds the NumPy reference of every kernel.
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

"""fusedtrain CPU kernels (C++, OpenMP, runtime SIMD dispatch).

Type stub of the compiled module, written from csrc/bind/{core_module,
optim_bind, chunk_bind, dense_bind, loss_bind, norm_bind, normalize_bind, gather_bind,
bench_bind}.cpp. tests/test_typing.py checks that it declares exactly the
names the built module exports. Arrays are NumPy arrays (anything else
raises TypeError); a list argument is a list or tuple of arrays. Users call
these through fusedtrain.ops, which validates the options first.
"""

from collections.abc import Sequence
from typing import Any, Literal, TypedDict, TypeVar, overload

import numpy as np
from numpy.typing import NDArray

_ScalarT = TypeVar("_ScalarT", bound=np.generic)
_Arrays = Sequence[NDArray[Any]]
_Reduction = Literal["mean", "sum", "none"]

class _BuildInfo(TypedDict):
    simd: str
    num_threads: int
    flush_denormal: bool
    openmp: int
    compiler: str
    blas: str
    blas_threads: int
    narrow_bf16: str
    narrow_half: str
    widen_half: str
    philox: str

class _Launch(TypedDict):
    tensors: list[int]
    blocks: list[tuple[int, int]]

class _ChunkLimits(TypedDict):
    depth: int
    max_tensors: int
    max_blocks: int
    chunk_size: int
    table_bytes: int
    param_limit: int
    reserved_bytes: int

# --- the module (core_module.cpp) -------------------------------------------

def set_num_threads(n: int) -> None:
    """Set the number of threads the kernels use."""

def get_num_threads() -> int:
    """Number of threads the kernels use."""

def set_flush_denormal(on: bool) -> None:
    """Flush subnormal numbers to zero in the optimizer loops (default off)."""

def get_flush_denormal() -> bool: ...
def build_info() -> _BuildInfo: ...
def _lowp_selfcheck(dtype: Literal["bfloat16", "float16"], stride: int = 1) -> int: ...
def _philox_selfcheck() -> int: ...
def _exp_selfcheck(stride64: int = 1099511627776) -> int: ...

# --- optimizer steps (optim_bind.cpp) ---------------------------------------
# Every step ends with the keywords grad_scale, found_inf, master_params
# (float32 master weights of float16 / bfloat16 params), stochastic_rounding,
# seed and rng_offset.

def adam_(
    params: _Arrays,
    grads: _Arrays,
    exp_avg: _Arrays,
    exp_avg_sq: _Arrays,
    max_exp_avg_sq: _Arrays | None,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    l1: float,
    amsgrad: bool,
    decoupled: bool,
    maximize: bool,
    dry_run: bool,
    grad_scale: float = 1.0,
    found_inf: bool = False,
    master_params: Sequence[NDArray[np.float32]] | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
    rng_offset: int = 0,
) -> None:
    """Fused Adam/AdamW step over lists of arrays (use fusedtrain.ops.adam_)."""

def sgd_(
    params: _Arrays,
    grads: _Arrays,
    momentum_buffer: _Arrays | None,
    step: int,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    l1: float,
    nesterov: bool,
    maximize: bool,
    dry_run: bool,
    grad_scale: float = 1.0,
    found_inf: bool = False,
    master_params: Sequence[NDArray[np.float32]] | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
    rng_offset: int = 0,
) -> None:
    """Fused SGD step over lists of arrays (use fusedtrain.ops.sgd_)."""

def rmsprop_(
    params: _Arrays,
    grads: _Arrays,
    square_avg: _Arrays,
    grad_avg: _Arrays | None,
    momentum_buffer: _Arrays | None,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    l1: float,
    centered: bool,
    maximize: bool,
    dry_run: bool,
    grad_scale: float = 1.0,
    found_inf: bool = False,
    master_params: Sequence[NDArray[np.float32]] | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
    rng_offset: int = 0,
) -> None:
    """Fused RMSProp step over lists of arrays (use fusedtrain.ops.rmsprop_)."""

def adagrad_(
    params: _Arrays,
    grads: _Arrays,
    state_sum: _Arrays,
    step: int,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    l1: float,
    maximize: bool,
    dry_run: bool,
    grad_scale: float = 1.0,
    found_inf: bool = False,
    master_params: Sequence[NDArray[np.float32]] | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
    rng_offset: int = 0,
) -> None:
    """Fused Adagrad step over lists of arrays (use fusedtrain.ops.adagrad_)."""

def found_nonfinite(arrays: _Arrays) -> bool:
    """True when any element of the arrays (one dtype: float32, float64,
    float16 or bfloat16) is inf or NaN."""

# --- the GPU chunk table, built on the host (chunk_bind.cpp) ----------------

def chunk_table(
    sizes: Sequence[int], chunk_size: int, max_tensors: int, max_blocks: int
) -> list[_Launch]:
    """The launches of a multi-tensor apply over tensors of `sizes` elements."""

def chunk_limits(depth: int) -> _ChunkLimits:
    """Capacities of the GPU chunk table for `depth` (1 to 5) buffers per tensor."""

# --- dense layers (dense_bind.cpp; the arguments are positional only) -------

def dense_forward(
    x: NDArray[_ScalarT],
    w: NDArray[_ScalarT],
    b: NDArray[_ScalarT] | None,
    out: NDArray[_ScalarT] | None,
    act_code: int,
    slope: float,
    /,
) -> tuple[NDArray[_ScalarT], NDArray[_ScalarT] | None]:
    """(y, saved): y = act(x @ w + b) with the epilogue fused; saved is the
    pre-activation where the activation's backward needs it, else None
    (use fusedtrain.ops.dense_forward)."""

def dense_backward(
    dy: NDArray[_ScalarT],
    x: NDArray[_ScalarT],
    w: NDArray[_ScalarT],
    saved: NDArray[_ScalarT] | None,
    act_code: int,
    slope: float,
    need_dx: bool,
    dw_out: NDArray[_ScalarT] | None,
    db_out: NDArray[_ScalarT] | None,
    accumulate: bool,
    dx_out: NDArray[_ScalarT] | None,
    workspace: NDArray[_ScalarT] | None,
    /,
) -> tuple[NDArray[_ScalarT] | None, NDArray[_ScalarT], NDArray[_ScalarT]]:
    """(dx, dw, db) of a dense layer; dx is None when need_dx is False
    (use fusedtrain.ops.dense_backward)."""

# --- losses and dropout (loss_bind.cpp) -------------------------------------
# The losses return (loss, gradient): loss a float for "mean" / "sum", an
# array for "none".

@overload
def softmax_cross_entropy(
    logits: NDArray[_ScalarT],
    labels: NDArray[np.integer[Any]],
    weight: NDArray[_ScalarT] | None,
    out: NDArray[_ScalarT] | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: Literal["mean", "sum"],
) -> tuple[float, NDArray[_ScalarT]]: ...
@overload
def softmax_cross_entropy(
    logits: NDArray[_ScalarT],
    labels: NDArray[np.integer[Any]],
    weight: NDArray[_ScalarT] | None,
    out: NDArray[_ScalarT] | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: Literal["none"],
) -> tuple[NDArray[_ScalarT], NDArray[_ScalarT]]: ...
@overload
def softmax_cross_entropy(
    logits: NDArray[_ScalarT],
    labels: NDArray[np.integer[Any]],
    weight: NDArray[_ScalarT] | None,
    out: NDArray[_ScalarT] | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
) -> tuple[float | NDArray[_ScalarT], NDArray[_ScalarT]]: ...
@overload
def bce_with_logits(
    logits: NDArray[_ScalarT], targets: NDArray[_ScalarT], reduction: Literal["mean", "sum"]
) -> tuple[float, NDArray[_ScalarT]]: ...
@overload
def bce_with_logits(
    logits: NDArray[_ScalarT], targets: NDArray[_ScalarT], reduction: Literal["none"]
) -> tuple[NDArray[_ScalarT], NDArray[_ScalarT]]: ...
@overload
def bce_with_logits(
    logits: NDArray[_ScalarT], targets: NDArray[_ScalarT], reduction: str
) -> tuple[float | NDArray[_ScalarT], NDArray[_ScalarT]]: ...
@overload
def mse(
    pred: NDArray[_ScalarT], target: NDArray[_ScalarT], reduction: Literal["mean", "sum"]
) -> tuple[float, NDArray[_ScalarT]]: ...
@overload
def mse(
    pred: NDArray[_ScalarT], target: NDArray[_ScalarT], reduction: Literal["none"]
) -> tuple[NDArray[_ScalarT], NDArray[_ScalarT]]: ...
@overload
def mse(
    pred: NDArray[_ScalarT], target: NDArray[_ScalarT], reduction: str
) -> tuple[float | NDArray[_ScalarT], NDArray[_ScalarT]]: ...
def dropout(
    x: NDArray[_ScalarT],
    p: float,
    seed: int,
    offset: int,
    out: NDArray[_ScalarT] | None = None,
    mask_out: NDArray[np.bool_] | None = None,
) -> tuple[NDArray[_ScalarT], NDArray[np.bool_]]:
    """(y, mask): dropout with a Philox4x32-10 mask (use fusedtrain.ops.dropout)."""

def dropout_backward(
    dy: NDArray[_ScalarT],
    mask: NDArray[np.bool_] | NDArray[np.uint8],
    p: float,
    out: NDArray[_ScalarT] | None = None,
) -> NDArray[_ScalarT]:
    """dy * mask / (1 - p) (use fusedtrain.ops.dropout_backward)."""

def philox4x32_10_(
    c0: int, c1: int, c2: int, c3: int, k0: int, k1: int
) -> tuple[int, int, int, int]:
    """The shared Philox4x32-10 on one counter and key: its four output words."""

# --- clipping (norm_bind.cpp) ------------------------------------------------

def global_norm(grads: _Arrays, norm_type: float) -> float:
    """The norm_type-norm of all elements of a list of arrays (use
    fusedtrain.ops.global_norm)."""

def clip_grad_norm_(
    grads: _Arrays, max_norm: float, norm_type: float, error_if_nonfinite: bool
) -> float:
    """Scales the arrays in place by min(max_norm / (norm + 1e-6), 1) and
    returns the norm (use fusedtrain.ops.clip_grad_norm_)."""

def scale_(grads: _Arrays, coef: float, dry_run: bool = False) -> None:
    """x *= coef for every element of a list of arrays, in place."""

def clamp_(grads: _Arrays, lo: float, hi: float, dry_run: bool = False) -> None:
    """x = clamp(x, lo, hi) for every element of a list of arrays, in place."""

# --- batch and layer normalization (normalize_bind.cpp; positional only) ----

def batch_norm_forward(
    x: NDArray[_ScalarT],
    weight: NDArray[_ScalarT] | None,
    bias: NDArray[_ScalarT] | None,
    running_mean: NDArray[_ScalarT] | None,
    running_var: NDArray[_ScalarT] | None,
    training: bool,
    momentum: float,
    eps: float,
    act_code: int,
    slope: float,
    out: NDArray[_ScalarT] | None,
    /,
) -> tuple[NDArray[_ScalarT], NDArray[_ScalarT], NDArray[_ScalarT], NDArray[_ScalarT] | None]:
    """(y, mean, rstd, z): batch normalization + activation; z is the
    pre-activation where the activation's backward needs it, else None
    (use fusedtrain.ops.batch_norm_forward)."""

def batch_norm_backward(
    dy: NDArray[_ScalarT],
    x: NDArray[_ScalarT],
    mean: NDArray[_ScalarT],
    rstd: NDArray[_ScalarT],
    s: NDArray[_ScalarT] | None,
    weight: NDArray[_ScalarT] | None,
    act_code: int,
    slope: float,
    dx_out: NDArray[_ScalarT] | None,
    dweight_out: NDArray[_ScalarT] | None,
    dbias_out: NDArray[_ScalarT] | None,
    accumulate: bool,
    /,
) -> tuple[NDArray[_ScalarT], NDArray[_ScalarT] | None, NDArray[_ScalarT] | None]:
    """(dx, dweight, dbias) of batch normalization in training mode
    (use fusedtrain.ops.batch_norm_backward)."""

def layer_norm_forward(
    x: NDArray[_ScalarT],
    weight: NDArray[_ScalarT] | None,
    bias: NDArray[_ScalarT] | None,
    eps: float,
    out: NDArray[_ScalarT] | None,
    /,
) -> tuple[NDArray[_ScalarT], NDArray[_ScalarT], NDArray[_ScalarT]]:
    """(y, mean, rstd): layer normalization of each row
    (use fusedtrain.ops.layer_norm_forward)."""

def layer_norm_backward(
    dy: NDArray[_ScalarT],
    x: NDArray[_ScalarT],
    mean: NDArray[_ScalarT],
    rstd: NDArray[_ScalarT],
    weight: NDArray[_ScalarT] | None,
    dx_out: NDArray[_ScalarT] | None,
    dweight_out: NDArray[_ScalarT] | None,
    dbias_out: NDArray[_ScalarT] | None,
    accumulate: bool,
    /,
) -> tuple[NDArray[_ScalarT], NDArray[_ScalarT] | None, NDArray[_ScalarT] | None]:
    """(dx, dweight, dbias) of layer normalization
    (use fusedtrain.ops.layer_norm_backward)."""

# --- the batch gather (gather_bind.cpp) --------------------------------------

def take_rows(
    src: NDArray[_ScalarT], idx: NDArray[np.int64], out: NDArray[_ScalarT]
) -> NDArray[_ScalarT]:
    """out[i] = src[idx[i]]; returns out (use fusedtrain.ops.take_rows)."""

# --- the benchmarks' memory ceilings (bench_bind.cpp) ------------------------

def null_step_(written: Sequence[_Arrays], read: _Arrays) -> None: ...
def null_mixed_step_(params: _Arrays, grads: _Arrays, written: Sequence[_Arrays]) -> None: ...

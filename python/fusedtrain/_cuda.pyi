"""fusedtrain CUDA kernels.

Type stub of the compiled module, written from csrc/bind/{cuda_module,
cuda_optim_bind, cuda_loss_bind, cuda_normalize_bind, cuda_norm_bind,
cuda_bench_bind}.cpp (the
module is built only where a CUDA compiler is found; tests/test_typing.py
checks these names against the bind sources, and against the module where
it is built). Arrays are objects with __cuda_array_interface__ (CuPy
arrays, torch CUDA tensors); ``stream`` is a cudaStream_t as an integer (0:
the legacy default stream). The kernels allocate nothing: missing outputs
come from ``empty(shape, typestr)`` and reduction scratch from
``workspace(nbytes)``, both called after every check. ``dry_run=True``
checks the arguments and returns None. Users call these through
fusedtrain.ops.
"""

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, TypedDict, overload

class _GpuArray(Protocol):
    @property
    def __cuda_array_interface__(self) -> dict[str, Any]: ...

_Arrays = Sequence[_GpuArray]
_Empty = Callable[[tuple[int, ...], str], _GpuArray]
_Workspace = Callable[[int], _GpuArray]

class _Status(TypedDict):
    device_count: int
    error: int
    message: str
    runtime_version: int

# --- the module (cuda_module.cpp) -------------------------------------------

def device_count() -> int:
    """Number of CUDA devices usable from this process (0 without a driver)."""

def is_available() -> bool:
    """True when a CUDA driver and at least one device are present."""

def status() -> _Status:
    """Result of the device query: count, CUDA error code and message, runtime version."""

# --- optimizer steps (cuda_optim_bind.cpp) ----------------------------------
# _core's positional arguments plus `stream`; found_inf is None or a
# 1-element float32 GPU array read inside the kernel.

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
    stream: int,
    grad_scale: float = 1.0,
    found_inf: _GpuArray | None = None,
    master_params: _Arrays | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
    rng_offset: int = 0,
) -> None:
    """Fused Adam/AdamW step over lists of GPU arrays on `stream`."""

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
    stream: int,
    grad_scale: float = 1.0,
    found_inf: _GpuArray | None = None,
    master_params: _Arrays | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
    rng_offset: int = 0,
) -> None:
    """Fused SGD step over lists of GPU arrays on `stream`."""

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
    stream: int,
    grad_scale: float = 1.0,
    found_inf: _GpuArray | None = None,
    master_params: _Arrays | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
    rng_offset: int = 0,
) -> None:
    """Fused RMSProp step over lists of GPU arrays on `stream`."""

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
    stream: int,
    grad_scale: float = 1.0,
    found_inf: _GpuArray | None = None,
    master_params: _Arrays | None = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
    rng_offset: int = 0,
) -> None:
    """Fused Adagrad step over lists of GPU arrays on `stream`."""

def found_nonfinite_(arrays: _Arrays, out: _GpuArray, dry_run: bool, stream: int) -> None:
    """Sets out (1-element float32) to 1 when any element is inf or NaN, without waiting."""

# --- losses and dropout (cuda_loss_bind.cpp) --------------------------------
# The losses return (loss, gradient): loss a float for "mean" / "sum", a GPU
# array for "none"; None after a dry run.

@overload
def softmax_cross_entropy(
    logits: _GpuArray,
    labels: _GpuArray,
    weight: _GpuArray | None,
    out: _GpuArray | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    empty: _Empty,
    workspace: _Workspace,
    dry_run: Literal[True],
    stream: int,
) -> None: ...
@overload
def softmax_cross_entropy(
    logits: _GpuArray,
    labels: _GpuArray,
    weight: _GpuArray | None,
    out: _GpuArray | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    empty: _Empty,
    workspace: _Workspace,
    dry_run: bool,
    stream: int,
) -> tuple[float | _GpuArray, _GpuArray] | None: ...
@overload
def bce_with_logits(
    logits: _GpuArray,
    targets: _GpuArray,
    reduction: str,
    empty: _Empty,
    workspace: _Workspace,
    dry_run: Literal[True],
    stream: int,
) -> None: ...
@overload
def bce_with_logits(
    logits: _GpuArray,
    targets: _GpuArray,
    reduction: str,
    empty: _Empty,
    workspace: _Workspace,
    dry_run: bool,
    stream: int,
) -> tuple[float | _GpuArray, _GpuArray] | None: ...
@overload
def mse(
    pred: _GpuArray,
    target: _GpuArray,
    reduction: str,
    empty: _Empty,
    workspace: _Workspace,
    dry_run: Literal[True],
    stream: int,
) -> None: ...
@overload
def mse(
    pred: _GpuArray,
    target: _GpuArray,
    reduction: str,
    empty: _Empty,
    workspace: _Workspace,
    dry_run: bool,
    stream: int,
) -> tuple[float | _GpuArray, _GpuArray] | None: ...
def dropout(
    x: _GpuArray,
    p: float,
    seed: int,
    offset: int,
    out: _GpuArray | None,
    mask_out: _GpuArray | None,
    empty: _Empty,
    dry_run: bool,
    stream: int,
) -> tuple[_GpuArray, _GpuArray] | None:
    """(y, mask) with the Philox4x32-10 mask of the CPU path; None after a dry run."""

def dropout_backward(
    dy: _GpuArray,
    mask: _GpuArray,
    p: float,
    out: _GpuArray | None,
    empty: _Empty,
    dry_run: bool,
    stream: int,
) -> _GpuArray | None:
    """dy * mask / (1 - p); None after a dry run."""

# host-side launch arithmetic, for the CPU-run tests
def ce_workspace_bytes(n: int) -> int: ...
def elementwise_workspace_bytes(n: int) -> int: ...
def label_bytes_text(raw: bytes, is_signed: bool) -> str: ...
def grid_for(work: int, per_block: int) -> int: ...

# --- batch / layer normalization (cuda_normalize_bind.cpp) --------------------
# _core's positional arguments, then empty, workspace, dry_run, stream; a dry
# run returns None. mean / rstd are float64 GPU arrays.

def batch_norm_forward(
    x: _GpuArray,
    weight: _GpuArray | None,
    bias: _GpuArray | None,
    running_mean: _GpuArray | None,
    running_var: _GpuArray | None,
    training: bool,
    momentum: float,
    eps: float,
    act_code: int,
    slope: float,
    out: _GpuArray | None,
    empty: _Empty,
    workspace: _Workspace,
    dry_run: bool,
    stream: int,
) -> tuple[_GpuArray, _GpuArray, _GpuArray, _GpuArray | None] | None: ...
def batch_norm_backward(
    dy: _GpuArray,
    x: _GpuArray,
    mean: _GpuArray,
    rstd: _GpuArray,
    s: _GpuArray | None,
    weight: _GpuArray | None,
    act_code: int,
    slope: float,
    dx_out: _GpuArray | None,
    dweight_out: _GpuArray | None,
    dbias_out: _GpuArray | None,
    accumulate: bool,
    empty: _Empty,
    workspace: _Workspace,
    dry_run: bool,
    stream: int,
) -> tuple[_GpuArray, _GpuArray | None, _GpuArray | None] | None: ...
def layer_norm_forward(
    x: _GpuArray,
    weight: _GpuArray | None,
    bias: _GpuArray | None,
    eps: float,
    out: _GpuArray | None,
    empty: _Empty,
    dry_run: bool,
    stream: int,
) -> tuple[_GpuArray, _GpuArray, _GpuArray] | None: ...
def layer_norm_backward(
    dy: _GpuArray,
    x: _GpuArray,
    mean: _GpuArray,
    rstd: _GpuArray,
    weight: _GpuArray | None,
    dx_out: _GpuArray | None,
    dweight_out: _GpuArray | None,
    dbias_out: _GpuArray | None,
    accumulate: bool,
    empty: _Empty,
    workspace: _Workspace,
    dry_run: bool,
    stream: int,
) -> tuple[_GpuArray, _GpuArray | None, _GpuArray | None] | None: ...

# --- clipping (cuda_norm_bind.cpp); out / total_norm: one float64 element ---

def global_norm(grads: _Arrays, norm_type: float, out: _GpuArray, stream: int) -> None: ...
def clip_by_norm_(
    grads: _Arrays, total_norm: _GpuArray, max_norm: float, dry_run: bool, stream: int
) -> None: ...
def scale_(grads: _Arrays, coef: float, dry_run: bool, stream: int) -> None: ...
def clamp_(grads: _Arrays, lo: float, hi: float, dry_run: bool, stream: int) -> None: ...

# --- the benchmarks' memory ceiling (cuda_bench_bind.cpp) -------------------

def null_step_(written: Sequence[_Arrays], read: _Arrays, stream: int) -> None: ...

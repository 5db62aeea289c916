"""Functional, in-place kernels.

Layout, top-down: ``cli -> train -> nn / optim / torch -> ops -> backend ->
_core / _cuda``. This module is the layer every optimizer step goes
through: the public functions below, the optimizer objects
(:mod:`fusedtrain.optim`) and the torch adapter (:mod:`fusedtrain.torch`)
all end in :func:`fused_step`, which holds each kernel's argument list and
asks :func:`fusedtrain.backend.module_for` which module runs it. The loss,
dense and clipping functions (``_ops_loss``, ``_ops_dense``, ``_ops_clip``)
are re-exported here and dispatch the same way.

Every optimizer function updates ``params`` and its state buffers in place, in
one fused pass over memory, for one array or a whole list of arrays in one
call. Arguments are an array or a list (tuple) of arrays; all arrays of one
call share one dtype (float32 or float64), are C-contiguous, and each state
buffer has the shape of its parameter. Nothing is converted: an array that
does not fit raises, and a call that raises has changed nothing.

``step`` is the step count including the current step (1 on the first call),
as torch.optim keeps it. Semantics, defaults and the order of floating-point
operations follow torch.optim, with one addition: ``l1`` adds
``l1 * sign(p)`` to the gradient (L1 regularisation).

Keyword arguments every optimizer takes (loss scaling, mixed precision):

``grad_scale`` (default 1.0)
    The gradients arrive multiplied by ``grad_scale`` (a scaled loss); the
    kernel multiplies each one by ``1 / grad_scale``, the reciprocal computed
    once on the host in double and rounded to the compute type (exact for
    powers of two, which :class:`fusedtrain.amp.DynamicLossScaler` uses;
    torch's fused Adam divides instead, which differs by at most an ulp for
    other scales).
``found_inf`` (default None)
    When nonzero the step is skipped: params, master weights and states stay
    bitwise as they were (the arguments are still checked). NumPy calls take
    a bool, a number or a 1-element float32 array, read once on the host; GPU
    calls take a 1-element float32 GPU array, read inside the kernel (no
    synchronisation), e.g. written by :func:`fusedtrain.amp.found_nonfinite`.
``master_params`` (default None)
    float32 master weights, one per parameter, required for (and only for)
    float16 / bfloat16 params (``numpy.float16``, ``ml_dtypes.bfloat16``).
    The step reads the narrow gradient, updates the float32 master and the
    states in float32 arithmetic, and writes the master and the parameter
    rounded to the narrow type, in one pass. States of narrow params are
    float32 or bfloat16 (all of one dtype; bfloat16 states are rounded to
    nearest even after each update).
``stochastic_rounding`` (default False), ``seed`` (0), ``rng_offset``
    Round narrow params stochastically instead of to nearest even: up with
    probability equal to the distance from the lower neighbour in ulps, using
    Philox4x32-10 (key ``seed``, counter offset ``rng_offset``, default the
    step; 0 for rmsprop_) indexed by the element's position in the list's
    concatenation: deterministic, and independent of the thread count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import _validate as V
from .backend import CudaModule, computes_in_double, module_for

if TYPE_CHECKING:  # the types of the public signatures (never evaluated at run time)
    from collections.abc import Sequence
    from typing import Any, Protocol, TypeVar, Union

    from numpy.typing import NDArray

    class GpuArray(Protocol):
        """A GPU array: CuPy arrays, torch CUDA tensors."""

        @property
        def __cuda_array_interface__(self) -> dict[str, Any]: ...

    #: an array the kernels take: a NumPy array or a GPU array
    Array = Union[NDArray[Any], GpuArray]
    #: one array or a list (tuple) of them
    Arrays = Union[Array, Sequence[Array]]
    #: an array whose type (NumPy or GPU, and dtype) a result keeps
    ArrayT = TypeVar("ArrayT", bound=Array)
    #: a NumPy dtype a result keeps
    ScalarT = TypeVar("ScalarT", bound=np.generic)

__all__ = ["sgd_", "adam_", "adamw_", "rmsprop_", "adagrad_"]


# ---------------------------------------------------------------------------
# the one route to the optimizer kernels: the public functions below, the
# optimizer objects (fusedtrain.optim) and the torch adapter
# (fusedtrain.torch) all call fused_step
# ---------------------------------------------------------------------------
# Each kernel's positional arguments, listed here and nowhere else: from the
# parameter, gradient and state lists (a dict keyed by torch's state names),
# the step count and the validated hyperparameters (fusedtrain._validate's
# dicts; "decoupled" added for adam). dry_run is the last positional argument
# of every binding (backend.CudaModule appends the stream after it).
def _sgd(module, params, grads, state, step, h, dry_run, extra):
    module.sgd_(params, grads, state.get("momentum_buffer"), step, h["lr"], h["momentum"],
                h["dampening"], h["weight_decay"], h["l1"], h["nesterov"], h["maximize"],
                dry_run, **extra)


def _adam(module, params, grads, state, step, h, dry_run, extra):
    module.adam_(params, grads, state["exp_avg"], state["exp_avg_sq"],
                 state.get("max_exp_avg_sq"), step, h["lr"], h["beta1"], h["beta2"], h["eps"],
                 h["weight_decay"], h["l1"], h["amsgrad"], h["decoupled"], h["maximize"],
                 dry_run, **extra)


def _rmsprop(module, params, grads, state, step, h, dry_run, extra):
    module.rmsprop_(params, grads, state["square_avg"], state.get("grad_avg"),
                    state.get("momentum_buffer"), h["lr"], h["alpha"], h["eps"],
                    h["weight_decay"], h["momentum"], h["l1"], h["centered"], h["maximize"],
                    dry_run, **extra)


def _adagrad(module, params, grads, state, step, h, dry_run, extra):
    module.adagrad_(params, grads, state["sum"], step, h["lr"], h["lr_decay"],
                    h["weight_decay"], h["eps"], h["l1"], h["maximize"], dry_run, **extra)


_KERNELS = {"sgd": _sgd, "adam": _adam, "rmsprop": _rmsprop, "adagrad": _adagrad}
_NONE: dict = {}


def fused_step(kernel: str, params: list, grads: list, state: dict, step: int, h: dict,
               extra: dict = _NONE, *, dry_run: bool = False) -> None:
    """One fused optimizer step over lists of arrays: the layer under the
    public functions of this module, the optimizer objects and the torch
    adapter.

    ``kernel`` is ``"sgd"``, ``"adam"`` (``h["decoupled"]``: AdamW),
    ``"rmsprop"`` or ``"adagrad"``; ``params`` and ``grads`` are non-empty
    lists; ``state`` maps torch's state names (``exp_avg``, ``sum``, ...) to
    lists (absent or None: not used by this variant); ``h`` holds the
    hyperparameters already validated (:mod:`fusedtrain._validate`'s
    checkers: plain Python numbers). ``extra``: the kernels' keyword
    arguments in their checked form (``grad_scale`` a float, ``found_inf`` a
    bool or a GPU array, ``master_params`` a list, ``stochastic_rounding``,
    ``seed``, ``rng_offset``); ``grad_scale`` is checked here against the
    compute type of the params (its reciprocal must be finite and nonzero
    there). ``dry_run=True`` checks every argument and writes nothing.
    """
    first = params[0]
    if "grad_scale" in extra:
        V.grad_scale(extra["grad_scale"], computes_in_double(first))
    _KERNELS[kernel](module_for(first), params, grads, state, step, h, dry_run, extra)


def _list(x):
    return x if isinstance(x, (list, tuple)) else [x]


def _first(params):
    if isinstance(params, (list, tuple)):
        if not params:
            raise ValueError("params: expected a non-empty list of arrays, received an empty list")
        return params[0]
    return params


def _required(name: str, value, why: str):
    if value is None:
        raise ValueError(f"{name}: required when {why}; received None")
    return _list(value)


def _extras(params, step, grad_scale, found_inf, master_params, stochastic_rounding, seed,
            rng_offset) -> dict:
    """The keyword arguments of the loss-scaling and mixed-precision options,
    in the kernels' form."""
    if type(grad_scale) in (float, int) and grad_scale == 1.0 and found_inf is None \
            and master_params is None and stochastic_rounding is False:
        return {}  # the common call
    out = {}
    scale = V.grad_scale(grad_scale)
    if scale != 1.0:
        out["grad_scale"] = scale
    if found_inf is not None:
        if isinstance(module_for(_first(params)), CudaModule):
            # read inside the kernel: no synchronisation
            if not hasattr(found_inf, "__cuda_array_interface__"):
                raise TypeError("found_inf: expected a 1-element float32 GPU array (read inside "
                                f"the kernel), received {type(found_inf).__name__}")
            out["found_inf"] = found_inf
        elif V.found_inf(found_inf):  # read here, once
            out["found_inf"] = True
    if master_params is not None:
        out["master_params"] = _list(master_params)
    if stochastic_rounding is not False:
        if V.flag("stochastic_rounding", stochastic_rounding):
            out["stochastic_rounding"] = True
            out["seed"] = V.uint64("seed", seed)
            out["rng_offset"] = step if rng_offset is None else V.uint64("rng_offset", rng_offset)
    return out


def sgd_(params: Arrays, grads: Arrays, momentum_buffer: Arrays | None = None, *, step: int,
         lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
         weight_decay: float = 0.0, maximize: bool = False, l1: float = 0.0,
         grad_scale: float = 1.0, found_inf: bool | float | Array | None = None,
         master_params: Arrays | None = None, stochastic_rounding: bool = False, seed: int = 0,
         rng_offset: int | None = None) -> None:
    """Stochastic gradient descent with momentum, in place.

    Update (torch.optim.SGD)::

        d = g + weight_decay * p + l1 * sign(p)        (g = -g if maximize)
        buf = d                                          on step 1
        buf = momentum * buf + (1 - dampening) * d       afterwards
        d = d + momentum * buf  (nesterov)   or   d = buf
        p = p - lr * d

    ``momentum_buffer`` is required when momentum != 0; its contents are
    ignored and overwritten with ``d`` on step 1. Nesterov momentum:
    Sutskever et al., 2013. ``g`` is the gradient divided by ``grad_scale``;
    the loss-scaling and mixed-precision keywords are described in the
    module docstring.
    """
    h = V.sgd(lr, momentum, dampening, nesterov, weight_decay, l1, maximize)
    step = V.step(step)
    bufs = _required("momentum_buffer", momentum_buffer, "momentum != 0") if h["momentum"] != 0 else None
    _first(params)
    fused_step("sgd", _list(params), _list(grads), {"momentum_buffer": bufs}, step, h,
               _extras(params, step, grad_scale, found_inf, master_params, stochastic_rounding,
                       seed, rng_offset))


def _adam_or_adamw(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, betas, eps,
                   weight_decay, amsgrad, maximize, l1, decoupled, grad_scale, found_inf,
                   master_params, stochastic_rounding, seed, rng_offset):
    h = V.adam(lr, betas, eps, weight_decay, l1, amsgrad, maximize)
    h["decoupled"] = decoupled
    step = V.step(step)
    vmax = _required("max_exp_avg_sq", max_exp_avg_sq, "amsgrad=True") if h["amsgrad"] else None
    _first(params)
    fused_step("adam", _list(params), _list(grads),
               {"exp_avg": _list(exp_avg), "exp_avg_sq": _list(exp_avg_sq), "max_exp_avg_sq": vmax},
               step, h, _extras(params, step, grad_scale, found_inf, master_params,
                                stochastic_rounding, seed, rng_offset))


def adam_(params: Arrays, grads: Arrays, exp_avg: Arrays, exp_avg_sq: Arrays,
          max_exp_avg_sq: Arrays | None = None, *, step: int, lr: float = 1e-3,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False,
          l1: float = 0.0, grad_scale: float = 1.0, found_inf: bool | float | Array | None = None,
          master_params: Arrays | None = None, stochastic_rounding: bool = False, seed: int = 0,
          rng_offset: int | None = None) -> None:
    """Adam, in place (Kingma & Ba, 2015; AMSGrad: Reddi et al., 2018).

    Update at step t (torch.optim.Adam)::

        g = g + weight_decay * p + l1 * sign(p)        (g = -g if maximize)
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v), used for v below           (amsgrad)
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.
    ``max_exp_avg_sq`` is required when amsgrad=True. ``g`` is the gradient
    divided by ``grad_scale``; the loss-scaling and mixed-precision keywords
    are described in the module docstring.
    """
    _adam_or_adamw(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, betas, eps,
                   weight_decay, amsgrad, maximize, l1, False, grad_scale, found_inf,
                   master_params, stochastic_rounding, seed, rng_offset)


def adamw_(params: Arrays, grads: Arrays, exp_avg: Arrays, exp_avg_sq: Arrays,
           max_exp_avg_sq: Arrays | None = None, *, step: int, lr: float = 1e-3,
           betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
           weight_decay: float = 1e-2, amsgrad: bool = False, maximize: bool = False,
           l1: float = 0.0, grad_scale: float = 1.0, found_inf: bool | float | Array | None = None,
           master_params: Arrays | None = None, stochastic_rounding: bool = False, seed: int = 0,
           rng_offset: int | None = None) -> None:
    """AdamW, in place: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    As :func:`adam_`, except that weight decay scales the parameter instead
    of entering the gradient: ``p = p * (1 - lr * weight_decay)`` before the
    Adam update. Defaults as torch.optim.AdamW: weight_decay=1e-2.
    """
    _adam_or_adamw(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, betas, eps,
                   weight_decay, amsgrad, maximize, l1, True, grad_scale, found_inf,
                   master_params, stochastic_rounding, seed, rng_offset)


def rmsprop_(params: Arrays, grads: Arrays, square_avg: Arrays, grad_avg: Arrays | None = None,
             momentum_buffer: Arrays | None = None, *, lr: float = 1e-2, alpha: float = 0.99,
             eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
             centered: bool = False, maximize: bool = False, l1: float = 0.0,
             grad_scale: float = 1.0, found_inf: bool | float | Array | None = None,
             master_params: Arrays | None = None, stochastic_rounding: bool = False,
             seed: int = 0, rng_offset: int | None = None) -> None:
    """RMSProp, in place (Hinton, Lecture 6e; centered: Graves, 2013).

    Update (torch.optim.RMSprop)::

        g = g + weight_decay * p + l1 * sign(p)        (g = -g if maximize)
        sq = alpha * sq + (1 - alpha) * g * g
        ga = ga + (1 - alpha) * (g - ga);  avg = sqrt(sq - ga * ga) + eps   (centered)
        avg = sqrt(sq) + eps                                                (otherwise)
        buf = momentum * buf + g / avg;  p = p - lr * buf                   (momentum > 0)
        p = p - lr * g / avg                                                (otherwise)

    Defaults: lr=1e-2, alpha=0.99, eps=1e-8. ``grad_avg`` is required when
    centered=True and ``momentum_buffer`` when momentum > 0 (both start at 0).
    """
    h = V.rmsprop(lr, alpha, eps, weight_decay, momentum, centered, l1, maximize)
    ga = _required("grad_avg", grad_avg, "centered=True") if h["centered"] else None
    bufs = _required("momentum_buffer", momentum_buffer, "momentum > 0") if h["momentum"] > 0 else None
    _first(params)
    fused_step("rmsprop", _list(params), _list(grads),
               {"square_avg": _list(square_avg), "grad_avg": ga, "momentum_buffer": bufs}, 0, h,
               _extras(params, 0, grad_scale, found_inf, master_params, stochastic_rounding,
                       seed, rng_offset))


def adagrad_(params: Arrays, grads: Arrays, state_sum: Arrays, *, step: int, lr: float = 1e-2,
             lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10,
             maximize: bool = False, l1: float = 0.0, grad_scale: float = 1.0,
             found_inf: bool | float | Array | None = None, master_params: Arrays | None = None,
             stochastic_rounding: bool = False, seed: int = 0,
             rng_offset: int | None = None) -> None:
    """Adagrad, in place (Duchi et al., 2011).

    Update at step t (torch.optim.Adagrad)::

        g = g + weight_decay * p + l1 * sign(p)        (g = -g if maximize)
        sum = sum + g * g
        p = p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)

    Defaults: lr=1e-2, lr_decay=0, eps=1e-10. ``state_sum`` starts at
    initial_accumulator_value (torch's default 0).
    """
    h = V.adagrad(lr, lr_decay, weight_decay, eps, l1, maximize)
    step = V.step(step)
    _first(params)
    fused_step("adagrad", _list(params), _list(grads), {"sum": _list(state_sum)}, step, h,
               _extras(params, step, grad_scale, found_inf, master_params, stochastic_rounding,
                       seed, rng_offset))

from ._ops_dense import dense_backward, dense_forward  # noqa: E402

__all__ += ["dense_forward", "dense_backward"]

from ._ops_loss import softmax_cross_entropy, bce_with_logits, mse, dropout, dropout_backward  # noqa: E402

__all__ += ["softmax_cross_entropy", "bce_with_logits", "mse", "dropout", "dropout_backward"]

from ._ops_clip import clip_grad_norm_, clip_grad_value_, global_norm  # noqa: E402

__all__ += ["global_norm", "clip_grad_norm_", "clip_grad_value_"]


def take_rows(src: NDArray[ScalarT], idx: NDArray[np.int64],
              out: NDArray[ScalarT]) -> NDArray[ScalarT]:
    """``out[i] = src[idx[i]]`` for every i, in place, and returns ``out``:
    the rows of a C-contiguous NumPy array ``src`` (numeric or bool) gathered
    on the kernels' threads (the training loop's batch gather). ``idx`` is a
    C-contiguous int64 array; every index is checked against ``len(src)``
    (IndexError naming it) before anything is written. ``out`` has shape
    ``(len(idx),) + src.shape[1:]`` and src's dtype, and shares no memory with
    ``src`` or ``idx``. NumPy arrays only."""
    if not isinstance(src, np.ndarray):
        raise TypeError(f"src: expected a numpy.ndarray, received {type(src).__module__}."
                        f"{type(src).__name__}")
    return module_for(src, "src").take_rows(src, idx, out)


__all__ += ["take_rows"]

from ._ops_normalize import (batch_norm_backward, batch_norm_forward, layer_norm_backward,  # noqa: E402
                             layer_norm_forward)

__all__ += ["batch_norm_forward", "batch_norm_backward", "layer_norm_forward",
            "layer_norm_backward"]

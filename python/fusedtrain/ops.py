"""Functional, in-place kernels.

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

import numbers
import types

import numpy as np

from . import _validate as V
from .backend import module_for

__all__ = ["sgd_", "adam_", "adamw_", "rmsprop_", "adagrad_"]


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


def _found_inf(module, value) -> object:
    """found_inf as the kernel takes it: a bool on the CPU (read here once),
    the GPU array itself on the GPU (read inside the kernel)."""
    gpu = not isinstance(module, types.ModuleType)  # _core is a module; the GPU adapter is not
    if value is None:
        return None if gpu else False
    if gpu:
        if hasattr(value, "__cuda_array_interface__"):
            return value
        raise TypeError("found_inf: expected a 1-element float32 GPU array (read inside the "
                        f"kernel), received {type(value).__name__}")
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Real):
        return value != 0
    if isinstance(value, np.ndarray):
        if value.dtype != np.float32 or value.size != 1:
            raise TypeError("found_inf: expected a bool, a number or a 1-element float32 array, "
                            f"received a {value.dtype} array of shape {value.shape}")
        return bool(value.reshape(-1)[0] != 0)
    raise TypeError("found_inf: expected a bool, a number or a 1-element float32 array, "
                    f"received {type(value).__name__}")


def _extras(module, step, grad_scale, found_inf, master_params, stochastic_rounding, seed,
            rng_offset) -> dict:
    """The keyword arguments of the loss-scaling and mixed-precision options."""
    out = {}
    scale = V.grad_scale(grad_scale)
    if scale != 1.0:
        out["grad_scale"] = scale
    flag = _found_inf(module, found_inf)
    if flag is not None and flag is not False:
        out["found_inf"] = flag
    if master_params is not None:
        out["master_params"] = _list(master_params)
    if stochastic_rounding is not False:
        if V.flag("stochastic_rounding", stochastic_rounding):
            out["stochastic_rounding"] = True
            out["seed"] = V.uint64("seed", seed)
            out["rng_offset"] = step if rng_offset is None else V.uint64("rng_offset", rng_offset)
    return out


def sgd_(params, grads, momentum_buffer=None, *, step, lr=1e-3, momentum=0.0, dampening=0.0,
         nesterov=False, weight_decay=0.0, maximize=False, l1=0.0, grad_scale=1.0, found_inf=None,
         master_params=None, stochastic_rounding=False, seed=0, rng_offset=None):
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
    module = module_for(_first(params))
    module.sgd_(
        _list(params), _list(grads), bufs, step, h["lr"], h["momentum"], h["dampening"],
        h["weight_decay"], h["l1"], h["nesterov"], h["maximize"], False,
        **_extras(module, step, grad_scale, found_inf, master_params, stochastic_rounding, seed,
                  rng_offset))


def _adam(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, betas, eps,
          weight_decay, amsgrad, maximize, l1, decoupled, extras):
    h = V.adam(lr, betas, eps, weight_decay, l1, amsgrad, maximize)
    step = V.step(step)
    vmax = _required("max_exp_avg_sq", max_exp_avg_sq, "amsgrad=True") if h["amsgrad"] else None
    module = module_for(_first(params))
    module.adam_(
        _list(params), _list(grads), _list(exp_avg), _list(exp_avg_sq), vmax, step, h["lr"],
        h["beta1"], h["beta2"], h["eps"], h["weight_decay"], h["l1"], h["amsgrad"], decoupled,
        h["maximize"], False, **_extras(module, step, **extras))


def adam_(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
          betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False, l1=0.0,
          grad_scale=1.0, found_inf=None, master_params=None, stochastic_rounding=False, seed=0,
          rng_offset=None):
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
    _adam(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, betas, eps,
          weight_decay, amsgrad, maximize, l1, False,
          dict(grad_scale=grad_scale, found_inf=found_inf, master_params=master_params,
               stochastic_rounding=stochastic_rounding, seed=seed, rng_offset=rng_offset))


def adamw_(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
           betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False,
           l1=0.0, grad_scale=1.0, found_inf=None, master_params=None, stochastic_rounding=False,
           seed=0, rng_offset=None):
    """AdamW, in place: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    As :func:`adam_`, except that weight decay scales the parameter instead
    of entering the gradient: ``p = p * (1 - lr * weight_decay)`` before the
    Adam update. Defaults as torch.optim.AdamW: weight_decay=1e-2.
    """
    _adam(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, betas, eps,
          weight_decay, amsgrad, maximize, l1, True,
          dict(grad_scale=grad_scale, found_inf=found_inf, master_params=master_params,
               stochastic_rounding=stochastic_rounding, seed=seed, rng_offset=rng_offset))


def rmsprop_(params, grads, square_avg, grad_avg=None, momentum_buffer=None, *, lr=1e-2,
             alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
             maximize=False, l1=0.0, grad_scale=1.0, found_inf=None, master_params=None,
             stochastic_rounding=False, seed=0, rng_offset=None):
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
    module = module_for(_first(params))
    module.rmsprop_(
        _list(params), _list(grads), _list(square_avg), ga, bufs, h["lr"], h["alpha"], h["eps"],
        h["weight_decay"], h["momentum"], h["l1"], h["centered"], h["maximize"], False,
        **_extras(module, 0, grad_scale, found_inf, master_params, stochastic_rounding, seed,
                  rng_offset))


def adagrad_(params, grads, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
             eps=1e-10, maximize=False, l1=0.0, grad_scale=1.0, found_inf=None,
             master_params=None, stochastic_rounding=False, seed=0, rng_offset=None):
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
    module = module_for(_first(params))
    module.adagrad_(
        _list(params), _list(grads), _list(state_sum), step, h["lr"], h["lr_decay"],
        h["weight_decay"], h["eps"], h["l1"], h["maximize"], False,
        **_extras(module, step, grad_scale, found_inf, master_params, stochastic_rounding, seed,
                  rng_offset))

from ._ops_dense import dense_backward, dense_forward  # noqa: E402

__all__ += ["dense_forward", "dense_backward"]

from ._ops_loss import softmax_cross_entropy, bce_with_logits, mse, dropout, dropout_backward  # noqa: E402

__all__ += ["softmax_cross_entropy", "bce_with_logits", "mse", "dropout", "dropout_backward"]

from ._ops_clip import clip_grad_norm_, clip_grad_value_, global_norm  # noqa: E402

__all__ += ["global_norm", "clip_grad_norm_", "clip_grad_value_"]

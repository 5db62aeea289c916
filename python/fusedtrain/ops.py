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
"""

from __future__ import annotations

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


def sgd_(params, grads, momentum_buffer=None, *, step, lr=1e-3, momentum=0.0, dampening=0.0,
         nesterov=False, weight_decay=0.0, maximize=False, l1=0.0):
    """Stochastic gradient descent with momentum, in place.

    Update (torch.optim.SGD)::

        d = g + weight_decay * p + l1 * sign(p)        (g = -g if maximize)
        buf = d                                          on step 1
        buf = momentum * buf + (1 - dampening) * d       afterwards
        d = d + momentum * buf  (nesterov)   or   d = buf
        p = p - lr * d

    ``momentum_buffer`` is required when momentum != 0; its contents are
    ignored and overwritten with ``d`` on step 1. Nesterov momentum:
    Sutskever et al., 2013.
    """
    h = V.sgd(lr, momentum, dampening, nesterov, weight_decay, l1, maximize)
    step = V.step(step)
    bufs = _required("momentum_buffer", momentum_buffer, "momentum != 0") if h["momentum"] != 0 else None
    module_for(_first(params)).sgd_(
        _list(params), _list(grads), bufs, step, h["lr"], h["momentum"], h["dampening"],
        h["weight_decay"], h["l1"], h["nesterov"], h["maximize"], False)


def _adam(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, betas, eps,
          weight_decay, amsgrad, maximize, l1, decoupled):
    h = V.adam(lr, betas, eps, weight_decay, l1, amsgrad, maximize)
    step = V.step(step)
    vmax = _required("max_exp_avg_sq", max_exp_avg_sq, "amsgrad=True") if h["amsgrad"] else None
    module_for(_first(params)).adam_(
        _list(params), _list(grads), _list(exp_avg), _list(exp_avg_sq), vmax, step, h["lr"],
        h["beta1"], h["beta2"], h["eps"], h["weight_decay"], h["l1"], h["amsgrad"], decoupled,
        h["maximize"], False)


def adam_(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
          betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False, l1=0.0):
    """Adam, in place (Kingma & Ba, 2015; AMSGrad: Reddi et al., 2018).

    Update at step t (torch.optim.Adam)::

        g = g + weight_decay * p + l1 * sign(p)        (g = -g if maximize)
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v), used for v below           (amsgrad)
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.
    ``max_exp_avg_sq`` is required when amsgrad=True.
    """
    _adam(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, betas, eps,
          weight_decay, amsgrad, maximize, l1, False)


def adamw_(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
           betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False,
           l1=0.0):
    """AdamW, in place: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    As :func:`adam_`, except that weight decay scales the parameter instead
    of entering the gradient: ``p = p * (1 - lr * weight_decay)`` before the
    Adam update. Defaults as torch.optim.AdamW: weight_decay=1e-2.
    """
    _adam(params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, betas, eps,
          weight_decay, amsgrad, maximize, l1, True)


def rmsprop_(params, grads, square_avg, grad_avg=None, momentum_buffer=None, *, lr=1e-2,
             alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
             maximize=False, l1=0.0):
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
    module_for(_first(params)).rmsprop_(
        _list(params), _list(grads), _list(square_avg), ga, bufs, h["lr"], h["alpha"], h["eps"],
        h["weight_decay"], h["momentum"], h["l1"], h["centered"], h["maximize"], False)


def adagrad_(params, grads, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
             eps=1e-10, maximize=False, l1=0.0):
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
    module_for(_first(params)).adagrad_(
        _list(params), _list(grads), _list(state_sum), step, h["lr"], h["lr_decay"],
        h["weight_decay"], h["eps"], h["l1"], h["maximize"], False)

from ._ops_dense import dense_backward, dense_forward  # noqa: E402

__all__ += ["dense_forward", "dense_backward"]

from ._ops_loss import softmax_cross_entropy, bce_with_logits, mse, dropout, dropout_backward  # noqa: E402

__all__ += ["softmax_cross_entropy", "bce_with_logits", "mse", "dropout", "dropout_backward"]

from ._ops_clip import clip_grad_norm_, clip_grad_value_, global_norm  # noqa: E402

__all__ += ["global_norm", "clip_grad_norm_", "clip_grad_value_"]

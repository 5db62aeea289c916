"""Plain NumPy optimizer steps: the readable definition the kernels are tested
and benchmarked against.

Each function updates one parameter array and its state arrays in place,
computing in the arrays' dtype (float32 or float64). Per-step scalars are
computed in Python floats (double) and rounded once to the dtype, as the
kernels do, and the order of operations is torch.optim's, so float64 results
agree with the kernels to the last bits and float32 results to rounding.

``grad_scale``: the gradient is multiplied by ``T(1 / grad_scale)`` (negated
for maximize), the reciprocal taken in double and rounded once, as the
kernels do. :func:`mixed` runs any of these on float32 master weights for
float16 / bfloat16 params, as the kernels' mixed-precision step does.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["sgd", "adam", "adamw", "rmsprop", "adagrad", "mixed"]


def _grad(param, grad, maximize, weight_decay, l1, grad_scale=1.0):
    """The gradient the update sees: unscaled and sign-flipped by one
    multiply, L2 term, L1 term."""
    T = param.dtype.type
    inv = 1.0 / grad_scale
    g = grad.astype(T) * T(-inv if maximize else inv)
    if weight_decay != 0:
        g = g + T(weight_decay) * param
    if l1 != 0:
        g = g + T(l1) * np.sign(param)
    return g


def _lerp(start, end, weight):
    """start + weight * (end - start), from the nearer end (torch.lerp)."""
    T = start.dtype.type
    w = T(weight)
    if w < 0.5:
        return start + w * (end - start)
    return end - (end - start) * (T(1) - w)


def sgd(param, grad, momentum_buffer=None, *, step, lr=1e-3, momentum=0.0, dampening=0.0,
        nesterov=False, weight_decay=0.0, maximize=False, l1=0.0, grad_scale=1.0):
    """SGD with momentum (torch.optim.SGD); the buffer is set to d on step 1."""
    T = param.dtype.type
    d = _grad(param, grad, maximize, weight_decay, l1, grad_scale)
    if momentum != 0:
        if step == 1:
            momentum_buffer[...] = d
        else:
            momentum_buffer[...] = momentum_buffer * T(momentum) + T(1 - dampening) * d
        d = d + T(momentum) * momentum_buffer if nesterov else momentum_buffer
    param[...] = param + T(-lr) * d


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
         betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
         l1=0.0, decoupled=False, grad_scale=1.0):
    """Adam (Kingma & Ba, 2015) with bias correction; AMSGrad (Reddi et al., 2018).

    decoupled=True gives AdamW (Loshchilov & Hutter, 2019).
    """
    T = param.dtype.type
    beta1, beta2 = betas
    g = _grad(param, grad, maximize, 0.0 if decoupled else weight_decay, l1, grad_scale)
    if decoupled:
        param[...] = param * T(1 - lr * weight_decay)
    exp_avg[...] = _lerp(exp_avg, g, 1 - beta1)
    exp_avg_sq[...] = exp_avg_sq * T(beta2) + T(1 - beta2) * g * g
    second = exp_avg_sq
    if amsgrad:
        max_exp_avg_sq[...] = np.maximum(max_exp_avg_sq, exp_avg_sq)
        second = max_exp_avg_sq
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    denom = np.sqrt(second) / T(math.sqrt(bias_correction2)) + T(eps)
    param[...] = param + T(-step_size) * exp_avg / denom


def adamw(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, weight_decay=1e-2, **kw):
    """AdamW: Adam with decoupled weight decay."""
    adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, weight_decay=weight_decay,
         decoupled=True, **kw)


def rmsprop(param, grad, square_avg, grad_avg=None, momentum_buffer=None, *, lr=1e-2,
            alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
            maximize=False, l1=0.0, grad_scale=1.0):
    """RMSProp (Hinton, Lecture 6e); centered variant (Graves, 2013)."""
    T = param.dtype.type
    g = _grad(param, grad, maximize, weight_decay, l1, grad_scale)
    square_avg[...] = square_avg * T(alpha) + T(1 - alpha) * g * g
    if centered:
        grad_avg[...] = _lerp(grad_avg, g, 1 - alpha)
        avg = np.sqrt(square_avg + T(-1) * grad_avg * grad_avg)
    else:
        avg = np.sqrt(square_avg)
    avg = avg + T(eps)
    if momentum > 0:
        momentum_buffer[...] = momentum_buffer * T(momentum) + g / avg
        param[...] = param + T(-lr) * momentum_buffer
    else:
        param[...] = param + T(-lr) * g / avg


def adagrad(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
            eps=1e-10, maximize=False, l1=0.0, grad_scale=1.0):
    """Adagrad (Duchi et al., 2011) with learning-rate decay."""
    T = param.dtype.type
    g = _grad(param, grad, maximize, weight_decay, l1, grad_scale)
    clr = lr / (1 + (step - 1) * lr_decay)
    state_sum[...] = state_sum + g * g
    param[...] = param + T(-clr) * g / (np.sqrt(state_sum) + T(eps))


# ---------------------------------------------------------------------------
# mixed precision
# ---------------------------------------------------------------------------
def mixed(step_fn, param, grad, master, *states, dtype=np.float32, **hyper):
    """One mixed-precision step: ``step_fn`` (any reference above) on the
    float32 ``master`` weights with the narrow gradient widened to float32
    and the states widened to float32; then the master written back, each
    state rounded to nearest even into its own dtype (float32 or bfloat16),
    and ``param`` set to the master rounded to nearest even in ``param``'s
    dtype (float16 or bfloat16). ``dtype=np.float64`` runs the same step in
    float64 on float64 copies instead (the exact update, for tolerance
    checks). ``states`` may contain None (buffers a variant does not use)."""
    work = master.astype(dtype)
    wstates = [None if s is None else s.astype(dtype) for s in states]
    step_fn(work, grad.astype(dtype), *wstates, **hyper)
    master[...] = work.astype(master.dtype)
    for s, w in zip(states, wstates):
        if s is not None:
            s[...] = w.astype(s.dtype)
    param[...] = work.astype(param.dtype)

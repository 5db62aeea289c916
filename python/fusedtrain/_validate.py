"""Argument checks shared by every module of fusedtrain (the kernels'
hyperparameters, the training loop's, the layers', the data loaders').

Each check raises TypeError (not a number) or ValueError (out of range) with
the argument's name, what was expected and what was received, and returns
the value as a plain Python int / float / bool.
"""

from __future__ import annotations

import math
import numbers


def real(name: str, value) -> float:
    t = type(value)
    if t is float or t is int:  # fast path: these checks run on every step
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; received {type(value).__name__} {value!r}")
    return float(value)


class NotAnInt(TypeError, ValueError):
    """An int argument received something else (a float, a bool, a str):
    a TypeError, and a ValueError for callers that catch the ValueError the
    training loop's checks always raised."""


def integer(name: str, value, low: int | None = None, high: int | None = None, *,
            or_none: bool = False):
    """An int (not a bool; NumPy integers accepted) in [low, high]; with
    ``or_none``, None too (returned as it is)."""
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        if or_none and value is None:
            return None
        raise NotAnInt(f"{name} must be an int{_bounds(low, high)}{' or None' * or_none}; "
                       f"received {type(value).__name__} {value!r}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name} must be an int{_bounds(low, high)}{' or None' * or_none}; "
                         f"received {v!r}")
    return v


def _bounds(low, high) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    return f" <= {high}" if high is not None else ""


def positive(name: str, value) -> float:
    """A finite real number > 0."""
    v = real(name, value)
    if not 0.0 < v < math.inf:
        raise ValueError(f"{name} must be a finite number > 0; received {v!r}")
    return v


def at_least(name: str, value, low: float = 0.0) -> float:
    v = real(name, value)
    if not v >= low:  # also rejects NaN
        raise ValueError(f"{name} must be >= {low:g}; received {v!r}")
    return v


def in_range(name: str, value, low: float, high: float, closed_high: bool) -> float:
    v = real(name, value)
    ok = low <= v <= high if closed_high else low <= v < high
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must be in [{low:g}, {high:g}{bracket}; received {v!r}")
    return v


def flag(name: str, value) -> bool:
    if value is True or value is False:
        return value
    if not isinstance(value, (bool, int)) or isinstance(value, float):
        raise TypeError(f"{name} must be a bool; received {type(value).__name__} {value!r}")
    return bool(value)


def step(value) -> int:
    if type(value) is int and value >= 1:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"step must be an int >= 1; received {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"step must be an int >= 1 (the count including this step); received {value}")
    return int(value)


def betas(value) -> tuple[float, float]:
    try:
        b1, b2 = value
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair (beta1, beta2); received {value!r}") from None
    return in_range("betas[0]", b1, 0.0, 1.0, False), in_range("betas[1]", b2, 0.0, 1.0, False)


def is_finite(v: float) -> bool:
    return math.isfinite(v)


# ---------------------------------------------------------------------------
# one checker per optimizer: the hyperparameters of torch.optim, plus l1
# ---------------------------------------------------------------------------
def adam(lr, betas_, eps, weight_decay, l1, amsgrad, maximize) -> dict:
    b1, b2 = betas(betas_)
    return dict(
        lr=at_least("lr", lr),
        beta1=b1,
        beta2=b2,
        eps=at_least("eps", eps),
        weight_decay=at_least("weight_decay", weight_decay),
        l1=at_least("l1", l1),
        amsgrad=flag("amsgrad", amsgrad),
        maximize=flag("maximize", maximize),
    )


def sgd(lr, momentum, dampening, nesterov, weight_decay, l1, maximize) -> dict:
    out = dict(
        lr=at_least("lr", lr),
        momentum=at_least("momentum", momentum),
        dampening=real("dampening", dampening),
        nesterov=flag("nesterov", nesterov),
        weight_decay=at_least("weight_decay", weight_decay),
        l1=at_least("l1", l1),
        maximize=flag("maximize", maximize),
    )
    if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
        raise ValueError(
            "nesterov=True requires momentum > 0 and dampening = 0; received "
            f"momentum={out['momentum']!r}, dampening={out['dampening']!r}"
        )
    return out


def rmsprop(lr, alpha, eps, weight_decay, momentum, centered, l1, maximize) -> dict:
    return dict(
        lr=at_least("lr", lr),
        alpha=in_range("alpha", alpha, 0.0, 1.0, True),
        eps=at_least("eps", eps),
        weight_decay=at_least("weight_decay", weight_decay),
        momentum=at_least("momentum", momentum),
        centered=flag("centered", centered),
        l1=at_least("l1", l1),
        maximize=flag("maximize", maximize),
    )


def adagrad(lr, lr_decay, weight_decay, eps, l1, maximize) -> dict:
    return dict(
        lr=at_least("lr", lr),
        lr_decay=at_least("lr_decay", lr_decay),
        weight_decay=at_least("weight_decay", weight_decay),
        eps=at_least("eps", eps),
        l1=at_least("l1", l1),
        maximize=flag("maximize", maximize),
    )


# ---------------------------------------------------------------------------
# loss scaling and mixed precision (every optimizer)
# ---------------------------------------------------------------------------
def grad_scale(value, double: bool | None = None) -> float:
    """A loss scale: a finite number > 0. With ``double`` given (True: the
    kernels compute in float64, for float64 params; False: in float32, for
    float32 / float16 / bfloat16 params) its reciprocal -- what the kernels
    multiply the gradients by, rounded to that type -- must also be finite
    and nonzero there (2^-126 <= grad_scale <= 2^126 always is)."""
    if type(value) is float and (2.0**-126 <= value <= 2.0**126
                                 or (double is None and 0.0 < value < math.inf)):  # fast path
        return value
    v = real("grad_scale", value)
    if not 0.0 < v < math.inf:
        raise ValueError(f"grad_scale must be a finite number > 0; received {v!r}")
    if double is not None:
        r = 1.0 / v  # inf for a subnormal v
        ok = 0.0 < r < math.inf if double else _F32_TINY < r < _F32_HUGE
        if not ok:
            kind = "float64" if double else "float32"
            raise ValueError(
                f"grad_scale must be a number whose reciprocal is finite and nonzero in {kind} "
                f"(the kernels multiply the gradients by 1 / grad_scale rounded to {kind}, the "
                f"compute type of these params); received {v!r}")
    return v


# the doubles that round to 0 (<= 2^-150) or to inf (>= 2^128 - 2^103) in float32
_F32_TINY = 2.0**-150
_F32_HUGE = 2.0**128 - 2.0**103


def found_inf(value) -> bool:
    """found_inf read on the host: a bool, a real number (nonzero: found) or
    a 1-element float32 NumPy array."""
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, numbers.Real):  # bool, numpy.bool_ and numbers
        return value != 0
    if type(value).__name__ == "bool_":  # numpy.bool_ is not a numbers.Real
        return bool(value)
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None and hasattr(value, "__array_interface__"):
        if str(dtype) != "float32" or math.prod(shape) != 1:
            raise TypeError("found_inf: expected a bool, a number or a 1-element float32 array, "
                            f"received a {dtype} array of shape {tuple(shape)}")
        return bool(value.reshape(-1)[0] != 0)
    raise TypeError("found_inf: expected a bool, a number or a 1-element float32 array, "
                    f"received {type(value).__name__}")


def uint64(name: str, value) -> int:
    if type(value) is int and 0 <= value < 2**64:  # fast path: dropout's seed, every batch
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2**64); received {type(value).__name__} {value!r}")
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must be an int in [0, 2**64); received {value!r}")
    return int(value)

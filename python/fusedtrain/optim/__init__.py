"""Optimizer objects over the fused kernels: torch.optim's constructors,
parameter groups and state_dict layout, for NumPy and GPU arrays.

    opt = fusedtrain.optim.Adam(params, lr=1e-3)
    opt.step(grads)              # one fused call per parameter group
    opt = fusedtrain.optim.get("adamw")(params, lr=1e-3)   # by name

Every class goes through :mod:`fusedtrain.ops` to the kernels.
"""

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .base import Optimizer
from .rmsprop import RMSProp, RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSProp", "RMSprop", "Adagrad", "get", "NAMES"]

_REGISTRY = {"adam": Adam, "adamw": AdamW, "sgd": SGD, "rmsprop": RMSProp, "adagrad": Adagrad}

#: names accepted by :func:`get` (the command line's ``--optimizer`` choices)
NAMES = tuple(_REGISTRY)


def get(name):
    """The optimizer class called ``name`` (case-insensitive): ``"adam"``,
    ``"adamw"``, ``"sgd"``, ``"rmsprop"`` or ``"adagrad"``; an Optimizer
    subclass is returned as it is."""
    if isinstance(name, type) and issubclass(name, Optimizer):
        return name
    if not isinstance(name, str):
        raise TypeError(f"optimizer must be a name (one of {list(NAMES)}) or an Optimizer class; "
                        f"received {type(name).__name__} {name!r:.80}")
    try:
        return _REGISTRY[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {list(NAMES)}") from None

"""Optimizer objects over the fused kernels: torch.optim's constructors,
parameter groups and state_dict layout, for NumPy arrays.

    opt = fusedtrain.optim.Adam(params, lr=1e-3)
    opt.step(grads)              # one fused call per parameter group
"""

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .base import Optimizer
from .rmsprop import RMSProp, RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSProp", "RMSprop", "Adagrad"]

from __future__ import annotations

from .. import _validate as V
from .base import Optimizer


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening and Nesterov
    momentum (torch.optim.SGD; update rule in :func:`fusedtrain.ops.sgd_`).

    Defaults: lr=1e-3, momentum=0, dampening=0, nesterov=False,
    weight_decay=0, maximize=False, l1=0. State: ``momentum_buffer`` (when
    momentum != 0), set to the first step's gradient.
    """

    defaults_ = dict(lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                     maximize=False, l1=0.0)

    _kernel = "sgd"

    def _hyper(self, group):
        return V.sgd(group["lr"], group["momentum"], group["dampening"], group["nesterov"],
                     group["weight_decay"], group["l1"], group["maximize"])

    @staticmethod
    def _state_names(h):  # also fusedtrain.torch's
        return ("momentum_buffer",) if h["momentum"] != 0 else ()

from __future__ import annotations

from .. import _validate as V
from ..backend import module_for
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

    def _check(self, h):
        V.sgd(h["lr"], h["momentum"], h["dampening"], h["nesterov"], h["weight_decay"], h["l1"],
              h["maximize"])

    @staticmethod
    def _state_names(group):  # also fusedtrain.torch's
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _step_group(self, group, params, grads, buffers, step, dry_run=False, **extra):
        h = group
        module_for(params[0]).sgd_(
            params, grads, buffers.get("momentum_buffer"), step, float(h["lr"]),
            float(h["momentum"]), float(h["dampening"]), float(h["weight_decay"]), float(h["l1"]),
            bool(h["nesterov"]), bool(h["maximize"]), dry_run, **extra)

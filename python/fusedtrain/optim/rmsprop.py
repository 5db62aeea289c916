from __future__ import annotations

from .. import _validate as V
from ..backend import module_for
from .base import Optimizer


class RMSProp(Optimizer):
    """RMSProp (Hinton, Lecture 6e), centered (Graves, 2013), with momentum,
    as torch.optim.RMSprop; update rule in :func:`fusedtrain.ops.rmsprop_`.

    Defaults: lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
    centered=False, maximize=False, l1=0. State: ``square_avg``,
    ``momentum_buffer`` (momentum > 0), ``grad_avg`` (centered).
    """

    defaults_ = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                     centered=False, maximize=False, l1=0.0)

    def _check(self, h):
        V.rmsprop(h["lr"], h["alpha"], h["eps"], h["weight_decay"], h["momentum"], h["centered"],
                  h["l1"], h["maximize"])

    @staticmethod
    def _state_names(group):  # also fusedtrain.torch's
        names = ("square_avg",)
        if group["momentum"] > 0:
            names += ("momentum_buffer",)
        if group["centered"]:
            names += ("grad_avg",)
        return names

    def _step_group(self, group, params, grads, buffers, step, dry_run=False, **extra):
        h = group
        module_for(params[0]).rmsprop_(
            params, grads, buffers["square_avg"], buffers.get("grad_avg"),
            buffers.get("momentum_buffer"), float(h["lr"]), float(h["alpha"]), float(h["eps"]),
            float(h["weight_decay"]), float(h["momentum"]), float(h["l1"]), bool(h["centered"]),
            bool(h["maximize"]), dry_run, **extra)


RMSprop = RMSProp  # torch's spelling

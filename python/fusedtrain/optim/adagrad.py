from __future__ import annotations

from .. import _validate as V
from ..backend import module_for
from .base import Optimizer


class Adagrad(Optimizer):
    """Adagrad (Duchi et al., 2011) with learning-rate decay, as
    torch.optim.Adagrad; update rule in :func:`fusedtrain.ops.adagrad_`.

    Defaults: lr=1e-2, lr_decay=0, weight_decay=0,
    initial_accumulator_value=0, eps=1e-10, maximize=False, l1=0. State:
    ``sum``, starting at initial_accumulator_value.
    """

    defaults_ = dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                     eps=1e-10, maximize=False, l1=0.0)

    def _check(self, h):
        V.adagrad(h["lr"], h["lr_decay"], h["weight_decay"], h["eps"], h["l1"], h["maximize"])
        V.at_least("initial_accumulator_value", h["initial_accumulator_value"])

    @staticmethod
    def _state_names(group):  # also fusedtrain.torch's
        return ("sum",)

    def _initial_value(self, name, group):
        return group["initial_accumulator_value"]

    def _step_group(self, group, params, grads, buffers, step, dry_run=False, **extra):
        h = group
        module_for(params[0]).adagrad_(
            params, grads, buffers["sum"], step, float(h["lr"]), float(h["lr_decay"]),
            float(h["weight_decay"]), float(h["eps"]), float(h["l1"]), bool(h["maximize"]), dry_run,
            **extra)

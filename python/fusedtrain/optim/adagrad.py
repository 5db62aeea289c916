from __future__ import annotations

from .. import _validate as V
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

    _kernel = "adagrad"

    def _hyper(self, group):
        h = V.adagrad(group["lr"], group["lr_decay"], group["weight_decay"], group["eps"],
                      group["l1"], group["maximize"])
        h["initial_accumulator_value"] = V.at_least("initial_accumulator_value",
                                                    group["initial_accumulator_value"])
        return h

    @staticmethod
    def _state_names(h):  # also fusedtrain.torch's
        return ("sum",)

    def _initial_value(self, name, h):
        return h["initial_accumulator_value"]

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _validate as V
from .base import Optimizer, Options

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; the annotations are never evaluated


class Adagrad(Optimizer):
    """Adagrad (Duchi et al., 2011) with learning-rate decay, as
    torch.optim.Adagrad; update rule in :func:`fusedtrain.ops.adagrad_`.

    Defaults (torch's): lr=1e-2, lr_decay=0, weight_decay=0,
    initial_accumulator_value=0, eps=1e-10, maximize=False; l1=0
    (fusedtrain's L1 term). ``**options``: the mixed-precision keywords of
    :class:`~fusedtrain.optim.Optimizer`. State: ``sum``, starting at
    initial_accumulator_value.
    """

    _kernel = "adagrad"

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False, l1=0.0,
                 **options: Unpack[Options]):
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps,
                         maximize=maximize, l1=l1, **options)

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

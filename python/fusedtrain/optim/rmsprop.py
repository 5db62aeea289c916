from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _validate as V
from .base import Optimizer, Options

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; the annotations are never evaluated


class RMSProp(Optimizer):
    """RMSProp (Hinton, Lecture 6e), centered (Graves, 2013), with momentum,
    as torch.optim.RMSprop; update rule in :func:`fusedtrain.ops.rmsprop_`.

    Defaults (torch's): lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0,
    momentum=0, centered=False, maximize=False; l1=0 (fusedtrain's L1
    term). ``**options``: the mixed-precision keywords of
    :class:`~fusedtrain.optim.Optimizer`. State: ``square_avg``,
    ``momentum_buffer`` (momentum > 0), ``grad_avg`` (centered).
    """

    _kernel = "rmsprop"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, l1=0.0, **options: Unpack[Options]):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, maximize=maximize, l1=l1,
                         **options)

    def _hyper(self, group):
        return V.rmsprop(group["lr"], group["alpha"], group["eps"], group["weight_decay"],
                         group["momentum"], group["centered"], group["l1"], group["maximize"])

    @staticmethod
    def _state_names(h):  # also fusedtrain.torch's
        names = ("square_avg",)
        if h["momentum"] > 0:
            names += ("momentum_buffer",)
        if h["centered"]:
            names += ("grad_avg",)
        return names


RMSprop = RMSProp  # torch's spelling

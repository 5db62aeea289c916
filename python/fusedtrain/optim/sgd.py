from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _validate as V
from .base import Optimizer, Options

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; the annotations are never evaluated


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening and Nesterov
    momentum (torch.optim.SGD; update rule in :func:`fusedtrain.ops.sgd_`).

    Defaults (torch's): lr=1e-3, momentum=0, dampening=0, weight_decay=0,
    nesterov=False, maximize=False; l1=0 (fusedtrain's L1 term).
    ``**options``: the mixed-precision keywords of
    :class:`~fusedtrain.optim.Optimizer`. State: ``momentum_buffer`` (when
    momentum != 0), set to the first step's gradient.
    """

    _kernel = "sgd"

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, l1=0.0, **options: Unpack[Options]):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, l1=l1,
                         **options)

    def _hyper(self, group):
        return V.sgd(group["lr"], group["momentum"], group["dampening"], group["nesterov"],
                     group["weight_decay"], group["l1"], group["maximize"])

    @staticmethod
    def _state_names(h):  # also fusedtrain.torch's
        return ("momentum_buffer",) if h["momentum"] != 0 else ()

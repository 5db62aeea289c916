from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _validate as V
from .base import Optimizer, Options

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; the annotations are never evaluated


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), AMSGrad (Reddi et al., 2018), as
    torch.optim.Adam; update rule in :func:`fusedtrain.ops.adam_`.

    Defaults (torch's): lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0 (L2, added to the gradient), amsgrad=False,
    maximize=False; l1=0 (fusedtrain's L1 term). ``**options``: the
    mixed-precision keywords of :class:`~fusedtrain.optim.Optimizer`
    (master_weights, state_dtype, stochastic_rounding, seed). State:
    ``exp_avg``, ``exp_avg_sq`` and ``max_exp_avg_sq`` (amsgrad).
    """

    _kernel = "adam"
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, l1=0.0, **options: Unpack[Options]):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, l1=l1, **options)

    def _hyper(self, group):
        h = V.adam(group["lr"], group["betas"], group["eps"], group["weight_decay"], group["l1"],
                   group["amsgrad"], group["maximize"])
        h["decoupled"] = self._decoupled
        return h

    @staticmethod
    def _state_names(h):  # also fusedtrain.torch's
        base = ("exp_avg", "exp_avg_sq")
        return base + ("max_exp_avg_sq",) if h["amsgrad"] else base


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019),
    as torch.optim.AdamW: ``p *= 1 - lr * weight_decay`` before the Adam
    update. Defaults as :class:`Adam` except weight_decay=1e-2 (torch's).
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, l1=0.0, **options: Unpack[Options]):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, l1=l1,
                         **options)

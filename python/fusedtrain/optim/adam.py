from __future__ import annotations

from .. import _validate as V
from .base import Optimizer


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), AMSGrad (Reddi et al., 2018), as
    torch.optim.Adam; update rule in :func:`fusedtrain.ops.adam_`.

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (L2,
    added to the gradient), amsgrad=False, maximize=False, l1=0. State:
    ``exp_avg``, ``exp_avg_sq`` and ``max_exp_avg_sq`` (amsgrad).
    """

    defaults_ = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                     maximize=False, l1=0.0)
    _kernel = "adam"
    _decoupled = False

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
    update. Defaults as :class:`Adam` except weight_decay=1e-2.
    """

    defaults_ = {**Adam.defaults_, "weight_decay": 1e-2}
    _decoupled = True

from __future__ import annotations

from .. import _validate as V
from ..backend import module_for
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
    _decoupled = False

    def _check(self, h):
        V.adam(h["lr"], h["betas"], h["eps"], h["weight_decay"], h["l1"], h["amsgrad"], h["maximize"])

    @staticmethod
    def _state_names(group):  # also fusedtrain.torch's
        base = ("exp_avg", "exp_avg_sq")
        return base + ("max_exp_avg_sq",) if group["amsgrad"] else base

    def _step_group(self, group, params, grads, buffers, step, dry_run=False, **extra):
        h = group
        b1, b2 = h["betas"]
        module_for(params[0]).adam_(
            params, grads, buffers["exp_avg"], buffers["exp_avg_sq"], buffers.get("max_exp_avg_sq"),
            step, float(h["lr"]), float(b1), float(b2), float(h["eps"]), float(h["weight_decay"]),
            float(h["l1"]), bool(h["amsgrad"]), self._decoupled, bool(h["maximize"]), dry_run,
            **extra)


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019),
    as torch.optim.AdamW: ``p *= 1 - lr * weight_decay`` before the Adam
    update. Defaults as :class:`Adam` except weight_decay=1e-2.
    """

    defaults_ = {**Adam.defaults_, "weight_decay": 1e-2}
    _decoupled = True

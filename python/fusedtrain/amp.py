"""Loss scaling for mixed-precision training.

A float16 gradient underflows to zero below 6e-8 (2^-24); scaling the loss
by S (a power of two) scales every gradient by S and keeps small ones
representable. The optimizer unscales them inside its fused step
(``grad_scale=S``: the gradient is multiplied by ``1 / S``). When a scaled
gradient overflows (inf or NaN), the step is skipped (``found_inf``) and S
is halved; after ``growth_interval`` clean steps in a row, S is doubled
(Micikevicius et al., "Mixed Precision Training", ICLR 2018; torch's
GradScaler)::

    scaler = DynamicLossScaler()
    loss, dout = loss_fn(out, y)
    model.backward(dout * scaler.scale)
    scaler.step(opt, grads)          # found_inf check, fused step, update
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _validate as V
from .backend import _core, module_for

__all__ = ["DynamicLossScaler", "found_nonfinite"]


def found_nonfinite(arrays, out=None):
    """Whether any element of ``arrays`` (an array or a list of arrays of one
    dtype: float32, float64, float16 or bfloat16) is inf or NaN: one fused
    parallel pass over the exponent bits, no temporaries.

    NumPy arrays: returns a bool (``out`` must be None). GPU arrays: ``out``
    is a 1-element float32 GPU array, set to 1 on the caller's stream when
    inf or NaN is found and left as it is otherwise (zero it first); it is
    returned, and can be passed as ``found_inf`` to the optimizer steps,
    which read it inside the kernel: no synchronisation anywhere."""
    if not isinstance(arrays, (list, tuple)):
        arrays = [arrays]
    if arrays and isinstance(arrays[0], np.ndarray):
        if out is not None:
            raise TypeError("out: expected None for NumPy arrays (the result is returned), "
                            f"received {type(out).__name__}")
        return bool(_core.found_nonfinite(list(arrays)))
    if not arrays:
        raise ValueError("arrays: expected a non-empty list of arrays, received an empty list")
    if out is None:
        raise TypeError("out: expected a 1-element float32 GPU array for GPU arrays, received None")
    module_for(arrays[0]).found_nonfinite_(list(arrays), out)
    return out


class DynamicLossScaler:
    """Dynamic loss scale (defaults as torch.amp.GradScaler).

    ``scale``: the current factor (init_scale). :meth:`update` with
    ``found_inf`` true multiplies it by ``backoff_factor`` (0.5) and restarts
    the count of clean steps; ``growth_interval`` (2000) clean steps in a row
    multiply it by ``growth_factor`` (2). With growth_factor=1 and
    backoff_factor=1 it is a static scale that still skips overflowing steps.
    """

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000):
        self.scale = V.real("init_scale", init_scale)
        if not 0.0 < self.scale < math.inf:
            raise ValueError(f"init_scale must be a finite number > 0; received {init_scale!r}")
        self.growth_factor = V.at_least("growth_factor", growth_factor, 1.0)
        if not math.isfinite(self.growth_factor):
            raise ValueError(f"growth_factor must be finite; received {growth_factor!r}")
        self.backoff_factor = V.in_range("backoff_factor", backoff_factor, 0.0, 1.0, True)
        if self.backoff_factor == 0.0:
            raise ValueError(f"backoff_factor must be in (0, 1]; received {backoff_factor!r}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, numbers.Integral) \
                or growth_interval < 1:
            raise ValueError(f"growth_interval must be an int >= 1; received {growth_interval!r}")
        self.growth_interval = int(growth_interval)
        self.good_steps = 0      # clean steps since the last change of scale
        self.skipped_steps = 0   # steps skipped for overflow, in total

    def update(self, found_inf) -> None:
        """Account for one step: back off on overflow, grow after
        growth_interval clean steps."""
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.skipped_steps += 1
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            grown = self.scale * self.growth_factor
            if math.isfinite(grown):
                self.scale = grown
            self.good_steps = 0

    def step(self, optimizer, grads) -> bool:
        """Check ``grads`` (gradients of the loss times ``scale``) for inf /
        NaN, step ``optimizer`` with ``grad_scale=scale`` and that verdict,
        then :meth:`update`. Returns True when the step was taken."""
        found = found_nonfinite(grads)
        optimizer.step(grads, grad_scale=self.scale, found_inf=found)
        self.update(found)
        return not found

    def state_dict(self) -> dict:
        return {"scale": self.scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "good_steps": self.good_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        other = DynamicLossScaler(state["scale"], state["growth_factor"], state["backoff_factor"],
                                  state["growth_interval"])
        other.good_steps = int(state["good_steps"])
        other.skipped_steps = int(state["skipped_steps"])
        self.__dict__.update(other.__dict__)

    def __repr__(self) -> str:
        return (f"DynamicLossScaler(scale={self.scale:g}, growth_factor={self.growth_factor:g}, "
                f"backoff_factor={self.backoff_factor:g}, growth_interval={self.growth_interval})")

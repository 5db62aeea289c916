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

Layout: used by ``train`` and by user loops beside ``optim``; its kernels go
through :func:`fusedtrain.backend.module_for` like every other call.
"""

from __future__ import annotations

import math

import numpy as np

from . import _validate as V
from .backend import CudaModule, module_for

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
    if not arrays:
        raise ValueError("arrays: expected a non-empty list of arrays, received an empty list")
    module = module_for(arrays[0], "arrays[0]")
    if not isinstance(module, CudaModule):
        if out is not None:
            raise TypeError("out: expected None for NumPy arrays (the result is returned), "
                            f"received {type(out).__name__}")
        return bool(module.found_nonfinite(list(arrays)))
    if out is None:
        raise TypeError("out: expected a 1-element float32 GPU array for GPU arrays, received None")
    module.found_nonfinite_(list(arrays), out)
    return out


class DynamicLossScaler:
    """Dynamic loss scale (defaults as torch.amp.GradScaler).

    ``scale``: the current factor (init_scale). :meth:`update` with
    ``found_inf`` true multiplies it by ``backoff_factor`` (0.5) and restarts
    the count of clean steps; ``growth_interval`` (2000) clean steps in a row
    multiply it by ``growth_factor`` (2). With growth_factor=1 and
    backoff_factor=1 it is a static scale that still skips overflowing steps.

    ``min_scale`` (default 2^-24): the scale never backs off below it. The
    optimizers multiply the gradients by ``1 / scale`` rounded to float32,
    which overflows for scales below about 3e-39 (halving from 2^16 gets there
    after about 150 overflows in a row) and would turn parameters into
    +-inf; they refuse such a scale, so the scaler must stop above it. 2^-24
    keeps ``1 / scale`` = 2^24 exact and far from overflow (a float32
    gradient below 2e31 unscales to a finite value) while accepting any
    static scale used in practice, including scales below 1 for losses that
    overflow float16 even unscaled. A scaler at its floor that still finds
    inf / NaN keeps skipping those steps (counted in ``skipped_steps``): the
    gradients are non-finite at every usable scale, a problem of the model
    or the data that no scale fixes. torch's GradScaler has no floor: its
    scale halves towards 0 (then to 0.0, after about 1100 overflows), and
    every later step is skipped or, once the reciprocal is infinite,
    poisoned; fusedtrain's differs there.
    """

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000, min_scale=2.0**-24):
        self.min_scale = V.real("min_scale", min_scale)
        if not _MIN <= self.min_scale < math.inf:
            raise ValueError(f"min_scale must be a finite number >= 2**-126 (its reciprocal a "
                             f"finite float32); received {min_scale!r}")
        self.scale = V.real("init_scale", init_scale)
        if not self.min_scale <= self.scale < math.inf:
            raise ValueError(f"init_scale must be a finite number >= min_scale "
                             f"({self.min_scale!r}); received {init_scale!r}")
        self.growth_factor = V.at_least("growth_factor", growth_factor, 1.0)
        if not math.isfinite(self.growth_factor):
            raise ValueError(f"growth_factor must be finite; received {growth_factor!r}")
        self.backoff_factor = V.in_range("backoff_factor", backoff_factor, 0.0, 1.0, True)
        if self.backoff_factor == 0.0:
            raise ValueError(f"backoff_factor must be in (0, 1]; received {backoff_factor!r}")
        self.growth_interval = V.integer("growth_interval", growth_interval, 1)
        self.good_steps = 0      # clean steps since the last change of scale
        self.skipped_steps = 0   # steps skipped for overflow, in total

    def update(self, found_inf) -> None:
        """Account for one step: back off on overflow (not below min_scale),
        grow after growth_interval clean steps (while the scale stays finite)."""
        if found_inf:
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
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
                "good_steps": self.good_steps, "skipped_steps": self.skipped_steps,
                "min_scale": self.min_scale}

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict`. Everything is checked first (the keys,
        every value's type and range, as the constructor checks them;
        ``good_steps`` an int in [0, growth_interval), ``skipped_steps`` an
        int >= 0); any problem raises ValueError naming the entry and
        changes nothing. A state without ``min_scale`` (saved before it
        existed) keeps this scaler's."""
        if not isinstance(state, dict):
            raise ValueError(f"state: expected a dict, received {type(state).__name__}")
        required = {"scale", "growth_factor", "backoff_factor", "growth_interval", "good_steps",
                    "skipped_steps"}
        missing, extra = required - set(state), set(state) - required - {"min_scale"}
        if missing or extra:
            raise ValueError(f"state: expected the keys of DynamicLossScaler.state_dict(); missing "
                             f"{sorted(missing)}, unexpected {sorted(map(str, extra))}")
        try:
            other = DynamicLossScaler(state["scale"], state["growth_factor"],
                                      state["backoff_factor"], state["growth_interval"],
                                      state.get("min_scale", self.min_scale))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"state: {exc}") from None
        for name, high in (("good_steps", other.growth_interval - 1), ("skipped_steps", None)):
            try:
                setattr(other, name, V.integer(name, state[name], 0, high))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"state: {exc}") from None
        self.__dict__.update(other.__dict__)

    def __repr__(self) -> str:
        return (f"DynamicLossScaler(scale={self.scale:g}, growth_factor={self.growth_factor:g}, "
                f"backoff_factor={self.backoff_factor:g}, growth_interval={self.growth_interval}, "
                f"min_scale={self.min_scale:g})")


_MIN = 2.0**-126

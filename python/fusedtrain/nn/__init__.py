"""Layers, losses and models over the fused kernels."""

from . import init, losses
from .layers import Dense, Dropout, Layer
from .model import Sequential

__all__ = ["init", "losses", "Layer", "Dense", "Dropout", "Sequential"]

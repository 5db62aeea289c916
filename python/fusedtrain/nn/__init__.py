"""Layers, losses and models over the fused kernels."""

from . import init, losses
from .layers import ACTIVATIONS, Dense, Dropout, Layer
from .model import Sequential
from .saving import load_model

__all__ = ["init", "losses", "Layer", "Dense", "Dropout", "Sequential", "load_model",
           "ACTIVATIONS"]

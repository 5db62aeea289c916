"""Layers, losses and models over the fused kernels."""

from . import init, losses
from .layers import ACTIVATIONS, BatchNorm, Dense, Dropout, Layer, LayerNorm
from .model import Sequential
from .saving import load_model

__all__ = ["init", "losses", "Layer", "Dense", "Dropout", "BatchNorm", "LayerNorm", "Sequential",
           "load_model", "ACTIVATIONS"]

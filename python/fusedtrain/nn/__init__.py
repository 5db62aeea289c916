"""Layers, losses and models over the fused kernels."""

from . import init

__all__ = ["init"]

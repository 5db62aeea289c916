"""Scratch buffers of the layers and losses, bounded by the largest batch."""

from __future__ import annotations

import numpy as np


class _Rows:
    """Per-layer scratch of (rows, *tail) arrays: one buffer per name, as
    large as the largest batch seen, handed out as views of its first rows
    (C-contiguous). Memory stays bounded by the largest batch whatever the
    sequence of batch sizes (predict over x[:k] for every k, say)."""

    __slots__ = ("_bufs", "_views")

    def __init__(self):
        self._bufs = {}
        self._views = {}  # name -> the last view handed out (the same batch size again: it)

    def get(self, name, n, tail, dtype):
        view = self._views.get(name)
        if view is not None and len(view) == n and view.shape[1:] == tail and view.dtype == dtype:
            return view
        buf = self._bufs.get(name)
        if buf is None or len(buf) < n or buf.shape[1:] != tail or buf.dtype != dtype:
            keep = buf is not None and buf.shape[1:] == tail and buf.dtype == dtype
            buf = self._bufs[name] = np.empty((max(n, len(buf)) if keep else n,) + tail, dtype)
        view = self._views[name] = buf[:n]
        return view

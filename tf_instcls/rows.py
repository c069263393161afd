"""Rows of a numpy matrix at unit L2 norm: the one host-side normaliser (kNN, the linear
probe, W's prior rows, the geometry and similarity statistics). The lowest layer with
``defaults``: it imports nothing of the package. (On the mesh the loss and mining share
``losses.cosine_softmax.l2_normalize_rows``.)"""

from __future__ import annotations

import numpy as np


def unit_rows(x, dtype=None) -> np.ndarray:
    """``x`` [n, d] (as ``dtype``; None keeps it) with each row scaled to unit norm; a
    zero row stays zero (norms are floored at 1e-12)."""
    x = np.asarray(x, dtype)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

"""Geometry of W and of the features: the measurements behind "why does it learn slowly".

All cheap (O(N D) plus a fixed 1,024-row sample for percentiles), so the kNN monitor can
log them every epoch. The mean pairwise cosine of a set of unit vectors is
(|sum u|^2 - n) / (n (n - 1)): no [N, N] matrix is formed.
"""

from __future__ import annotations

import numpy as np

from tf_instcls.rows import unit_rows

_SAMPLE = 1024


def _unit(x):
    return unit_rows(x, np.float64)


def mean_pairwise_cosine(x) -> float:
    """Mean cosine over all ordered pairs i != j of the rows of ``x`` [n, d]."""
    return _mean_pairwise(_unit(x))


def _mean_pairwise(u) -> float:
    n = len(u)
    if n < 2:
        return float("nan")
    total = np.sum(u, axis=0)
    return float((total @ total - n) / (n * (n - 1)))


def pairwise_cosine_sample(x, seed: int = 0) -> np.ndarray:
    """Cosines of the off-diagonal pairs of (at most) 1,024 seeded rows of ``x``."""
    return _sample(_unit(x), seed)


def _sample(u, seed: int) -> np.ndarray:
    if len(u) > _SAMPLE:
        u = u[np.random.default_rng(seed).choice(len(u), _SAMPLE, replace=False)]
    sims = u @ u.T
    return sims[~np.eye(len(u), dtype=bool)]


def geometry_stats(prefix: str, x) -> dict:
    """Norms and cone statistics of the rows of ``x``, keys prefixed by ``prefix``."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1)
    u = x / np.maximum(norms, 1e-12)[:, None]  # normalised once for both statistics
    sims = _sample(u, 0)
    return {
        f"{prefix}_norm_mean": float(norms.mean()),
        f"{prefix}_norm_p5": float(np.percentile(norms, 5)),
        f"{prefix}_norm_p95": float(np.percentile(norms, 95)),
        f"{prefix}_mean_cos": _mean_pairwise(u),
        f"{prefix}_cos_p5": float(np.percentile(sims, 5)),
        f"{prefix}_cos_p95": float(np.percentile(sims, 95)),
    }


def alignment(w, embeddings) -> float:
    """Mean cos(w_i, x_i): how close each row of W is to its own image's embedding."""
    return float(np.mean(np.sum(_unit(w) * _unit(embeddings), axis=1)))

"""Float64 numpy references for the losses (the ground truth of the numeric tests)."""

from __future__ import annotations

import numpy as np


def label_matrix(instance_ids, num_classes, hard_negatives=None, smoothing=0.0):
    """Y [B, N] of Eq. 2, entries added per listed class (duplicates accumulate)."""
    ids = np.asarray(instance_ids)
    batch = ids.shape[0]
    y = np.zeros((batch, num_classes), np.float64)
    if smoothing > 0:
        hard = np.asarray(hard_negatives)
        np.add.at(y, (np.arange(batch), ids), 1.0 - smoothing)
        rows = np.repeat(np.arange(batch), hard.shape[1])
        np.add.at(y, (rows, hard.reshape(-1)), smoothing / hard.shape[1])
    else:
        y[np.arange(batch), ids] = 1.0
    return y


def cosine_softmax_loss(
    x, ids, w, *, temperature=0.15, hard_negatives=None, smoothing=0.0,
    valid_classes=None, upstream=None,
):
    """Loss [B] of Eq. 1/3 and gradients (dL/dx, dL/dW) of sum_b upstream_b * loss_b."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    valid = w.shape[0] if valid_classes is None else valid_classes
    x_norm = np.linalg.norm(x, axis=1, keepdims=True)
    w_norm = np.linalg.norm(w[:valid], axis=1, keepdims=True)
    xn, wn = x / x_norm, w[:valid] / w_norm
    z = xn @ wn.T / temperature  # [B, N_valid]
    y = label_matrix(ids, valid, hard_negatives, smoothing)
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    p = e / e.sum(axis=1, keepdims=True)
    num = (y * e).sum(axis=1, keepdims=True)
    loss = (-np.log(num) + np.log(e.sum(axis=1, keepdims=True)))[:, 0]
    q = y * e / num
    u = np.ones(x.shape[0]) if upstream is None else np.asarray(upstream, np.float64)
    g = u[:, None] * (p - q) / temperature  # dJ/dz
    d_xn, d_wn = g @ wn, g.T @ xn
    d_x = (d_xn - xn * (xn * d_xn).sum(1, keepdims=True)) / x_norm
    d_w = np.zeros_like(w)
    d_w[:valid] = (d_wn - wn * (wn * d_wn).sum(1, keepdims=True)) / w_norm
    return loss, d_x, d_w

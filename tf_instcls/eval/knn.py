"""Weighted kNN classification (NPID protocol): cosine similarity, top-k neighbours,
each voting for its class with weight exp(s / temperature)."""

from __future__ import annotations

import numpy as np


def weighted_knn(
    bank_features: np.ndarray,
    bank_labels: np.ndarray,
    query_features: np.ndarray,
    query_labels: np.ndarray,
    *,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    block_size: int = 1024,
) -> dict:
    """Top-1 / top-5 accuracy (in %) of weighted kNN; memory bounded by query blocks.

    Features need not be normalised. ``k`` is clipped to the bank size.
    """
    bank = np.asarray(bank_features, np.float32)
    query = np.asarray(query_features, np.float32)
    if bank.ndim != 2 or query.ndim != 2 or bank.shape[1] != query.shape[1]:
        raise ValueError(f"feature shapes do not match: bank {bank.shape}, query {query.shape}")
    if len(bank_labels) != len(bank) or len(query_labels) != len(query):
        raise ValueError("one label per feature row is required")
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0; got k={k}, temperature={temperature}")
    bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    query = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    bank_labels = np.asarray(bank_labels, np.int64)
    query_labels = np.asarray(query_labels, np.int64)
    classes = num_classes or int(max(bank_labels.max(), query_labels.max())) + 1
    k = min(k, len(bank))
    top1 = top5 = 0
    for start in range(0, len(query), block_size):
        sims = query[start : start + block_size] @ bank.T  # [q, M]
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, idx, axis=1)
        weights = np.exp(top_sims / temperature)
        votes = np.zeros((len(sims), classes), np.float64)
        np.add.at(votes, (np.arange(len(sims))[:, None], bank_labels[idx]), weights)
        ranked = np.argsort(-votes, axis=1, kind="stable")
        truth = query_labels[start : start + block_size]
        top1 += int((ranked[:, 0] == truth).sum())
        top5 += int((ranked[:, :5] == truth[:, None]).any(axis=1).sum())
    n = len(query)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "k": k,
            "temperature": temperature, "num_queries": n, "bank_size": len(bank)}

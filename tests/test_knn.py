"""Weighted kNN against a direct float64 numpy implementation."""

import numpy as np
import pytest

from tf_instcls.eval import weighted_knn


def _reference(bank, bank_y, query, query_y, k, t, classes):
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    top1 = top5 = 0
    for q, y in zip(query, query_y):
        sims = bank @ q
        nn = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(classes)
        for j in nn:
            votes[bank_y[j]] += np.exp(sims[j] / t)
        ranked = np.argsort(-votes, kind="stable")
        top1 += ranked[0] == y
        top5 += y in ranked[:5]
    return 100 * top1 / len(query), 100 * top5 / len(query)


@pytest.mark.parametrize("k,block", [(1, 7), (10, 1024), (500, 13)])
def test_matches_numpy_reference(k, block):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 16))
    bank_y, query_y = rng.integers(0, 8, 300), rng.integers(0, 8, 50)
    bank = centers[bank_y] + rng.normal(size=(300, 16))
    query = centers[query_y] + rng.normal(size=(50, 16))
    got = weighted_knn(bank, bank_y, query, query_y, k=k, block_size=block, num_classes=8)
    top1, top5 = _reference(bank, bank_y, query, query_y, min(k, 300), 0.07, 8)
    assert got["top1"] == pytest.approx(top1) and got["top5"] == pytest.approx(top5)
    assert got["top1"] > 50  # separable clusters: far above chance (12.5%)


def test_bad_inputs():
    with pytest.raises(ValueError, match="feature shapes"):
        weighted_knn(np.ones((3, 4)), [0, 1, 2], np.ones((2, 5)), [0, 1])
    with pytest.raises(ValueError, match="one label per"):
        weighted_knn(np.ones((3, 4)), [0, 1], np.ones((2, 4)), [0, 1])

"""Weighted kNN against a direct float64 numpy implementation."""

import numpy as np
import pytest

from tf_instcls.eval import weighted_knn
from tf_instcls.eval.knn import knn_grid, nearest_neighbours


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


@pytest.mark.parametrize("k,max_elements", [(1, 7), (10, 1 << 20), (500, 13), (20, 640)])
def test_matches_numpy_reference(k, max_elements):
    """Small ``max_elements`` forces query blocks and bank chunks (running top-k)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 16))
    bank_y, query_y = rng.integers(0, 8, 300), rng.integers(0, 8, 50)
    bank = centers[bank_y] + rng.normal(size=(300, 16))
    query = centers[query_y] + rng.normal(size=(50, 16))
    got = weighted_knn(bank, bank_y, query, query_y, k=k, max_elements=max_elements,
                       num_classes=8)
    top1, top5 = _reference(bank, bank_y, query, query_y, min(k, 300), 0.07, 8)
    assert got["top1"] == pytest.approx(top1) and got["top5"] == pytest.approx(top5)
    assert got["top1"] > 50  # separable clusters: far above chance (12.5%)


def test_bad_inputs():
    with pytest.raises(ValueError, match="feature shapes"):
        weighted_knn(np.ones((3, 4)), [0, 1, 2], np.ones((2, 5)), [0, 1])
    with pytest.raises(ValueError, match="one label per"):
        weighted_knn(np.ones((3, 4)), [0, 1], np.ones((2, 4)), [0, 1])


def test_neighbours_sorted_exclude_self_and_grid_equals_single_runs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6))
    idx, sims = nearest_neighbours(x, x, 5, max_elements=50, exclude_self=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    full = xn @ xn.T
    np.fill_diagonal(full, -np.inf)
    ref = np.argsort(-full, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(sims, np.take_along_axis(full, ref, axis=1), rtol=1e-5)
    y = rng.integers(0, 3, 40)
    grid = knn_grid(x, y, x[:10], y[:10], ks=[3, 7], temperatures=[0.07, 0.5])
    for row in grid:
        single = weighted_knn(x, y, x[:10], y[:10], k=row["k"], temperature=row["temperature"])
        assert single["top1"] == row["top1"] and single["top5"] == row["top5"]


@pytest.mark.parametrize("max_elements", [7, 64 * 5, 1 << 20])
def test_ties_at_the_kth_place_keep_the_lowest_bank_ids_whatever_the_chunking(max_elements):
    """A bank of six axis vectors, each repeated many times: the copies' similarities are
    exactly equal (one coordinate of the query, whatever the summation order), so
    every query's k-th place is a tie. The neighbours equal a stable sort of the whole
    row (what tools/embed.py printed before it shared this search), for one chunk and
    for many."""
    rng = np.random.default_rng(3)
    bank = np.eye(8, dtype=np.float32)[rng.integers(0, 6, 90)]
    query = rng.normal(size=(11, 8)).astype(np.float32)
    idx, sims = nearest_neighbours(bank, query, 10, max_elements=max_elements)
    unit = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    full = unit @ bank.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(sims, np.take_along_axis(full, expected, axis=1))

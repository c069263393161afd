"""The geometry statistics the kNN monitor logs, against direct float64 computation."""

import numpy as np

from tf_instcls.callbacks import geometry


def test_mean_pairwise_cosine_and_alignment_match_the_full_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 7)) + 0.5  # a cone: positive mean cosine
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u @ u.T
    full = sims[~np.eye(300, dtype=bool)].mean()
    assert abs(geometry.mean_pairwise_cosine(x) - full) < 1e-12
    assert full > 0.1
    w = x + 0.1 * rng.normal(size=x.shape)
    uw = w / np.linalg.norm(w, axis=1, keepdims=True)
    assert abs(geometry.alignment(w, x) - np.mean(np.sum(u * uw, axis=1))) < 1e-12
    stats = geometry.geometry_stats("w", 3.0 * x)
    assert abs(stats["w_norm_mean"] - 3.0 * np.linalg.norm(x, axis=1).mean()) < 1e-9
    assert stats["w_cos_p5"] < stats["w_mean_cos"] < stats["w_cos_p95"]


def test_sample_of_large_sets_is_bounded_and_seeded():
    x = np.random.default_rng(1).normal(size=(5000, 4))
    a = geometry.pairwise_cosine_sample(x, seed=3)
    assert a.shape == (1024 * 1023,)
    assert np.array_equal(a, geometry.pairwise_cosine_sample(x, seed=3))

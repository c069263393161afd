"""Fig. 4 statistics: exact intra/inter on made-up vectors; the prior beats Gaussian W."""

import numpy as np

from tf_instcls import data as data_lib
from tf_instcls import parallel
from tf_instcls.eval.similarity import intra_inter, similarity_stats


def test_intra_inter_against_a_direct_computation():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = xn @ wn.T
    got = intra_inter(x, w)
    assert np.isclose(got["intra"], 100 * np.diag(cos).mean())
    assert np.isclose(got["inter"], 100 * cos[~np.eye(7, dtype=bool)].mean())
    assert np.isclose(got["gap"], got["intra"] - got["inter"])


def test_running_bn_prior_gives_the_largest_gap_gaussian_none():
    """The paper's Fig. 4 ordering: running BN >> fixed BN, Gaussian ~ 0."""
    mesh = parallel.build_mesh(2)
    source = data_lib.load_source("digits").subset(np.arange(256), "digits256")
    stats = similarity_stats(source, mesh, backbone="convnet_small", image_size=16,
                             backbone_width=8, embedding_dim=64, head_hidden_dim=64)
    assert set(stats) == {"gaussian", "prior_fixed_bn", "prior_running_bn"}
    assert abs(stats["gaussian"]["gap"]) < 1.5
    assert stats["prior_running_bn"]["gap"] > 1.0
    assert stats["prior_running_bn"]["gap"] > stats["prior_fixed_bn"]["gap"]
    assert stats["prior_fixed_bn"]["intra"] > 90  # untrained BN statistics: features collapse

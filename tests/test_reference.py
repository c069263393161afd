"""The float64 reference itself is checked against finite differences."""

import numpy as np
import pytest

from reference import cosine_softmax_loss


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_reference_gradients_match_finite_differences(smoothing):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(3, 4)), rng.normal(size=(7, 4))
    ids, hard = np.array([0, 3, 5]), rng.integers(0, 6, (3, 2))
    upstream = np.array([1.0, -2.0, 0.5])

    def total(x_, w_):
        loss, _, _ = cosine_softmax_loss(
            x_, ids, w_, hard_negatives=hard, smoothing=smoothing, valid_classes=6
        )
        return (loss * upstream).sum()

    _, d_x, d_w = cosine_softmax_loss(
        x, ids, w, hard_negatives=hard, smoothing=smoothing, valid_classes=6, upstream=upstream
    )
    eps = 1e-6
    for array, grad in ((x, d_x), (w, d_w)):
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            plus, minus = array.copy(), array.copy()
            plus[index] += eps
            minus[index] -= eps
            args = (plus, w) if array is x else (x, plus)
            args_m = (minus, w) if array is x else (x, minus)
            numeric[index] = (total(*args) - total(*args_m)) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    assert np.all(d_w[6] == 0)  # padding row: no gradient

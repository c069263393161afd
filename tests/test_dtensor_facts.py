"""DTensor facts the design depends on (TF 2.21), checked so that a TensorFlow upgrade
that changes them is noticed. These two are why the smoothed loss builds its label
matrix Q from one-hot products (about (K + 1) / D of a logits matmul)
instead of scattering the K + 1 targets into the row-sharded [N, D] gradient of W:
scattering into a row-sharded tensor either gathers it whole, or is refused. If either
test fails, DTensor has learnt the scatter, and the loss could use it."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.experimental import dtensor

from tf_instcls import parallel
from tf_instcls.parallel import layouts


def _inputs(mesh):
    rng = np.random.default_rng(0)
    g = rng.normal(size=(16, 4)).astype(np.float32)
    idx = rng.integers(0, 16, (5, 1)).astype(np.int32)
    upd = rng.normal(size=(5, 4)).astype(np.float32)
    sharded = parallel.pack_sharded(g, layouts.row_sharded_layout(mesh, 2))
    rep = [parallel.pack_sharded(a, parallel.replicated_layout(mesh, 2)) for a in (idx, upd)]
    expected = g.copy()
    np.add.at(expected, idx[:, 0], upd)
    return g, sharded, rep, expected


def test_tensor_scatter_into_a_row_sharded_tensor_gathers_it_whole():
    mesh = parallel.build_mesh(4)
    _, sharded, (idx, upd), expected = _inputs(mesh)
    out = tf.function(tf.tensor_scatter_nd_add)(sharded, idx, upd)
    assert dtensor.fetch_layout(out).sharding_specs == [dtensor.UNSHARDED] * 2  # replicated
    np.testing.assert_allclose(parallel.to_numpy(out), expected, rtol=1e-6)


def test_scatter_add_into_a_row_sharded_variable_is_refused():
    mesh = parallel.build_mesh(4)
    _, sharded, (idx, upd), _ = _inputs(mesh)
    variable = dtensor.DVariable(sharded)

    @tf.function
    def scatter(idx, upd):
        variable.scatter_nd_add(idx, upd)
        return tf.constant(0)

    with pytest.raises(Exception, match="does not implement layout propagation"):
        scatter(idx, upd)

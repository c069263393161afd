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


def _bn_inputs(mesh):
    x = np.random.default_rng(1).normal(size=(8, 3, 3, 4)).astype(np.float32)
    xd = parallel.pack_sharded(x, layouts.batch_layout(mesh, 4))
    ones, zeros = (dtensor.copy_to_mesh(tf.constant(v, tf.float32, [4]),
                                        layouts.replicated_layout(mesh, 1)) for v in (1, 0))
    return x, xd, ones, zeros


def test_the_fused_batchnorm_kernel_has_no_layout_rule():
    """Why models/batchnorm.py builds training-mode BN from reductions on a mesh: the
    fused kernel (FusedBatchNormV3, what Keras and tf.nn use) is refused, even on one
    device."""
    _, xd, ones, zeros = _bn_inputs(parallel.build_mesh(1))
    with pytest.raises(Exception, match="FusedBatchNormV3' op does not implement layout"):
        tf.function(lambda x: tf.compat.v1.nn.fused_batch_norm(x, ones, zeros)[0])(xd)


@pytest.mark.parametrize("devices", [1, 2])
def test_an_enrolled_fused_batchnorm_v2_runs_replicated(devices):
    """What its fused path relies on (the module enrols the op by name): DTensor runs
    FusedBatchNormV2 replicated, every device on the whole batch (so only a 1-device
    mesh gains), with the statistics of the whole batch."""
    import tf_instcls.models.batchnorm  # noqa: F401  (the enrolment)

    mesh = parallel.build_mesh(devices)
    x, xd, ones, zeros = _bn_inputs(mesh)
    empty = dtensor.copy_to_mesh(tf.zeros([0]), layouts.replicated_layout(mesh, 1))
    y, mean, *_ = tf.function(lambda x: tf.raw_ops.FusedBatchNormV2(
        x=x, scale=ones, offset=zeros, mean=empty, variance=empty, is_training=True))(xd)
    assert dtensor.fetch_layout(y).sharding_specs == [dtensor.UNSHARDED] * 4
    np.testing.assert_allclose(parallel.to_numpy(mean), x.mean((0, 1, 2)), rtol=1e-5,
                               atol=1e-6)
    want = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-4)  # the op's epsilon
    np.testing.assert_allclose(parallel.to_numpy(y), want, rtol=1e-4, atol=1e-4)

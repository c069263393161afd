"""InstanceClassifier layouts, padding, initialisation and W's optimizer state."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.experimental import dtensor

from tf_instcls import parallel
from tf_instcls.losses import instance_classification_loss
from tf_instcls.training import MomentumSGD

from helpers import assert_close, pack_batch
from reference import cosine_softmax_loss

N, D = 13, 6


@pytest.mark.parametrize("devices,expected", [(1, 13), (2, 14), (4, 16), (8, 16)])
def test_padding_to_a_multiple_of_the_shard_count(devices, expected):
    clf = parallel.InstanceClassifier(N, D, mesh=parallel.build_mesh(devices), layout="sharded")
    w = parallel.to_numpy(clf.class_weights)
    assert clf.num_padded == expected and w.shape == (expected, D)
    assert np.all(w[N:] == 0) and np.all(np.abs(w[:N]).sum(1) > 0)
    assert clf.class_weights.layout.sharding_specs == ["batch", dtensor.UNSHARDED] or devices == 1


def test_initial_weights_do_not_depend_on_device_count_or_layout():
    values = [
        parallel.to_numpy(
            parallel.InstanceClassifier(
                5000, D, mesh=parallel.build_mesh(t), layout=layout, seed=3
            ).class_weights
        )[:5000]
        for t, layout in [(1, "sharded"), (4, "sharded"), (8, "sharded"), (4, "replicated")]
    ]
    plain = parallel.InstanceClassifier(5000, D, seed=3).class_weights.numpy()
    for v in values:
        np.testing.assert_array_equal(v, plain)


def test_sharded_weights_live_in_row_shards():
    mesh = parallel.build_mesh(4)
    clf = parallel.InstanceClassifier(N, D, mesh=mesh, layout="sharded")
    shards = dtensor.unpack(clf.class_weights.read_value())
    assert [s.shape.as_list() for s in shards] == [[4, D]] * 4
    replicated = parallel.InstanceClassifier(N, D, mesh=mesh, layout="replicated")
    assert [s.shape.as_list() for s in dtensor.unpack(replicated.class_weights.read_value())] == [
        [N, D]
    ] * 4


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="layout must be one of"):
        parallel.InstanceClassifier(N, D, layout="diagonal")
    with pytest.raises(ValueError, match="num_instances must be >= 2"):
        parallel.InstanceClassifier(1, D)


@pytest.mark.parametrize("devices", [1, 4])
@pytest.mark.parametrize("layout", ["sharded", "replicated"])
def test_momentum_slot_has_the_layout_of_w(devices, layout):
    mesh = parallel.build_mesh(devices)
    clf = parallel.InstanceClassifier(N, D, mesh=mesh, layout=layout)
    opt = MomentumSGD()
    opt.build(clf.distributed_variables)
    slot = opt.slot_for(clf.class_weights)
    assert isinstance(slot, dtensor.DVariable)
    assert slot.layout.sharding_specs == clf.class_weights.layout.sharding_specs
    local = [s.shape.as_list() for s in dtensor.unpack(slot.read_value())]
    assert local == [[clf.num_padded // clf.num_shards, D]] * devices


def _numpy_sgd(w, grads, lr, momentum, decay):
    buf = np.zeros_like(w)
    for g in grads:
        g = g + decay * w
        buf = momentum * buf + g
        w = w - lr * buf
    return w, buf


@pytest.mark.parametrize("devices,layout", [(1, "sharded"), (4, "sharded"), (4, "replicated")])
def test_training_steps_match_numpy_momentum_sgd(devices, layout):
    """Three full classifier steps (loss, backward, update) equal a float64 numpy run."""
    mesh = parallel.build_mesh(devices)
    clf = parallel.InstanceClassifier(N, D, mesh=mesh, layout=layout, seed=5)
    opt = MomentumSGD(momentum=0.9, weight_decay=1e-2)
    opt.build(clf.distributed_variables)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, D)).astype(np.float32)
    ids = rng.integers(0, N, 8).astype(np.int32)
    hard = rng.integers(0, N, (8, 3)).astype(np.int32)
    xd, idd, hd = pack_batch(mesh, x, ids, hard)

    @tf.function
    def step(xd, idd, hd):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(instance_classification_loss(
                xd, idd, clf.class_weights, temperature=clf.temperature, hard_negatives=hd,
                smoothing=0.2, chunk_size=clf.chunk_size, valid_classes=clf.num_instances))
        (grad_w,) = tape.gradient(loss, clf.distributed_variables)
        opt.apply_gradients(zip([grad_w], clf.distributed_variables), 0.5)
        return loss

    w = parallel.to_numpy(clf.class_weights).astype(np.float64)
    buf = np.zeros_like(w)
    for _ in range(3):
        step(xd, idd, hd)
        _, _, g = cosine_softmax_loss(
            x, ids, w, hard_negatives=hard, smoothing=0.2, valid_classes=N,
            upstream=np.full(8, 1 / 8),
        )
        g = g + 1e-2 * w
        buf = 0.9 * buf + g
        w = w - 0.5 * buf
    assert_close(parallel.to_numpy(clf.class_weights), w, name="W after 3 steps")
    assert_close(parallel.to_numpy(opt.slot_for(clf.class_weights)), buf, name="momentum")
    assert np.all(parallel.to_numpy(clf.class_weights)[N:] == 0)


def test_optimizer_rejects_unknown_variables_and_bad_hyperparameters():
    with pytest.raises(ValueError, match="momentum must be in"):
        MomentumSGD(momentum=1.0)
    opt = MomentumSGD()
    v = tf.Variable([1.0])
    with pytest.raises(ValueError, match="was not passed to MomentumSGD.build"):
        opt.apply_gradients([(tf.constant([1.0]), v)], 0.1)


@pytest.mark.parametrize("momentum,decay", [(0.0, 0.0), (0.0, 1e-2), (0.9, 0.0), (0.9, 1e-2)])
def test_optimizer_update_and_skip_match_numpy(momentum, decay):
    """apply_gradients = numpy momentum SGD; a skipped step with a NaN gradient leaves
    the variable and its momentum bit-identical."""
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    v = tf.Variable(w0)
    opt = MomentumSGD(momentum=momentum, weight_decay=decay)
    opt.build([v])
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3)]

    @tf.function
    def update(g, apply):
        opt.apply_gradients([(g, v)], 0.3, apply=apply)

    w, buf = w0.astype(np.float64), np.zeros((5, 3))
    for i, g in enumerate(grads):
        update(tf.constant(g), tf.constant(True))
        g = g + decay * w
        buf = momentum * buf + g
        w = w - 0.3 * buf
        assert_close(v.numpy(), w, name=f"W after step {i}")
        assert_close(opt.slot_for(v).numpy(), buf, name=f"momentum after step {i}")
        before = (v.numpy().copy(), opt.slot_for(v).numpy().copy())
        bad = np.full((5, 3), np.nan, np.float32)
        bad[0, 0] = np.inf
        update(tf.constant(bad), tf.constant(False))
        assert np.array_equal(v.numpy(), before[0]) and np.array_equal(
            opt.slot_for(v).numpy(), before[1]
        ), "a skipped step changed W or its momentum"


@pytest.mark.parametrize("devices", [1, 4])
def test_optimizer_groups_scale_decay_and_project_a_sharded_w(devices):
    """W's own group (lr scale, decay, unit-norm projection) against numpy on a
    row-sharded W; the backbone group keeps the optimizer's lr and decay."""
    mesh = parallel.build_mesh(devices)
    n, d = 10, 4
    clf = parallel.InstanceClassifier(n, d, mesh=mesh, seed=1, unit_norm_rows=True)
    w_var = clf.class_weights
    w = parallel.to_numpy(w_var).astype(np.float64)
    assert np.allclose(np.linalg.norm(w[:n], axis=1), 1.0, atol=1e-6)  # initial rows too
    assert np.all(w[n:] == 0)
    b_var = layouts_replicated(mesh, np.ones((3,), np.float32))
    opt = MomentumSGD(momentum=0.9, weight_decay=0.1)
    opt.build([b_var])
    opt.build([w_var], learning_rate_scale=5.0, weight_decay=0.0, project=clf.project_rows)
    rng = np.random.default_rng(0)
    buf_w, buf_b, b = np.zeros_like(w), np.zeros(3), np.ones(3)
    for step in range(3):
        gw = rng.normal(size=w.shape)
        gw[n:] = 0
        gb = rng.normal(size=3)

        @tf.function
        def update(gw_d, gb_d):
            opt.apply_gradients([(gb_d, b_var), (gw_d, w_var)], 0.2)

        update(parallel.pack_sharded(gw.astype(np.float32), w_var.layout),
               parallel.pack_sharded(gb.astype(np.float32), b_var.layout))
        buf_w = 0.9 * buf_w + gw
        w = w - 0.2 * 5.0 * buf_w
        w[:n] /= np.linalg.norm(w[:n], axis=1, keepdims=True)
        buf_b = 0.9 * buf_b + gb + 0.1 * b
        b = b - 0.2 * buf_b
        assert_close(parallel.to_numpy(w_var), w, rtol=1e-5, name=f"W after step {step}")
        assert_close(parallel.to_numpy(b_var), b, rtol=1e-5, name=f"b after step {step}")
    with pytest.raises(ValueError, match="learning_rate_scale"):
        opt.build([w_var], learning_rate_scale=0.0)


def layouts_replicated(mesh, value):
    from tf_instcls.parallel import layouts

    return layouts.replicated_variable(value, mesh, "b")


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_readme_step_with_the_classifiers_settings(reduction):
    """README's step: the loss on ``clf.class_weights`` with the classifier's temperature,
    chunking and real row count equals the reference, both reductions."""
    mesh = parallel.build_mesh(2)
    clf = parallel.InstanceClassifier(13, D, mesh=mesh, layout="sharded", temperature=0.2,
                                      chunk_size=3, seed=3)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, D)).astype(np.float32)
    ids = rng.integers(0, 13, 8).astype(np.int32)
    hard = rng.integers(0, 13, (8, 3)).astype(np.int32)
    w = parallel.to_numpy(clf.class_weights)  # builds W eagerly, as opt.build does in README

    @tf.function
    def step(xd, idd, hd):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(instance_classification_loss(
                xd, idd, clf.class_weights, temperature=clf.temperature, hard_negatives=hd,
                smoothing=0.2, chunk_size=clf.chunk_size, valid_classes=clf.num_instances,
                reduction=reduction))
        return loss, tape.gradient(loss, clf.distributed_variables)[0]

    loss, grad_w = step(*pack_batch(mesh, x, ids, hard))
    ref_loss, _, ref_w = cosine_softmax_loss(x, ids, w, temperature=0.2, hard_negatives=hard,
                                             smoothing=0.2, valid_classes=13,
                                             upstream=np.full(8, 1 / 8))
    assert_close(parallel.to_numpy(loss), ref_loss.mean(), name="loss")
    assert_close(parallel.to_numpy(grad_w), ref_w, name="dL/dW")

"""The BatchNorm with the closed-form training gradient against Keras' layer and a float64
numpy reference, on 1, 2 and 4 devices (statistics over the global batch)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_instcls import parallel
from tf_instcls.models.batchnorm import BatchNorm, _normalize
from tf_instcls.parallel import layouts

EPS = 1e-5


def _reference(x, w, gamma, beta):
    """float64 BN over all but the last axis and the gradient of sum(y * w)."""
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)
    inv = 1.0 / np.sqrt(var + EPS)
    xhat = (x - mean) * inv
    y = xhat * gamma + beta
    dx = gamma * inv * (w - w.mean(axes) - xhat * (w * xhat).mean(axes))
    return y, dx, (w * xhat).sum(axes), w.sum(axes), mean, var


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, shape)
    x[: shape[0] // 2] += 4.0  # halves of the batch with different means
    channels = shape[-1]
    return (x, rng.normal(size=shape), np.linspace(0.5, 2.0, channels),
            np.linspace(-1.0, 1.0, channels))


@pytest.mark.parametrize("shape", [(8, 5, 5, 6), (16, 7)])
def test_same_function_gradient_and_moving_statistics_as_keras_in_float64(shape):
    x, w, gamma, beta = _data(shape)
    results = {}
    for cls in (keras.layers.BatchNormalization, BatchNorm):
        bn = cls(momentum=0.9, epsilon=EPS, dtype="float64")
        bn.build(shape)
        bn.gamma.assign(gamma)
        bn.beta.assign(beta)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = bn(xt, training=True)
            loss = tf.reduce_sum(y * w) + tf.reduce_sum(tf.square(y))
        grads = tape.gradient(loss, [xt, bn.gamma, bn.beta])
        results[cls] = [y.numpy()] + [g.numpy() for g in grads] + [
            bn.moving_mean.numpy(), bn.moving_variance.numpy(),
            bn(xt, training=False).numpy()]
    for keras_value, ours in zip(results[keras.layers.BatchNormalization], results[BatchNorm]):
        np.testing.assert_allclose(ours, keras_value, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("devices", [1, 2, 4])
def test_statistics_and_gradient_over_the_global_batch_on_a_mesh(devices):
    """Batch-sharded x on T devices: y and the gradients equal the float64 reference
    of the whole batch (each device's rows have a different mean, so local statistics
    would be wrong)."""
    mesh = parallel.build_mesh(devices)
    x, w, gamma, beta = _data((8, 3, 3, 4), seed=devices)
    shard = layouts.batch_layout(mesh, 4)
    replicated = layouts.replicated_layout(mesh, 1)
    xd, wd = parallel.pack_sharded(x, shard), parallel.pack_sharded(w, shard)
    gd, bd = (tf.experimental.dtensor.copy_to_mesh(tf.constant(v), replicated)
              for v in (gamma, beta))

    @tf.function
    def run(x, w, gamma, beta):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y, mean, variance = _normalize(x, gamma, beta, [0, 1, 2], EPS)
            loss = tf.reduce_sum(y * w)
        return (y, *tape.gradient(loss, [x, gamma, beta]), mean, variance)

    got = [parallel.to_numpy(t) for t in run(xd, wd, gd, bd)]
    for value, want in zip(got, _reference(x, w, gamma, beta)):
        np.testing.assert_allclose(value, want, rtol=1e-9, atol=1e-9)


def test_mixed_bfloat16_normalises_in_float32_like_keras():
    x, w, gamma, beta = _data((8, 4, 4, 6))
    outs = []
    for cls in (keras.layers.BatchNormalization, BatchNorm):
        bn = cls(momentum=0.9, epsilon=EPS, dtype="mixed_bfloat16")
        bn.build(x.shape)
        bn.gamma.assign(gamma.astype(np.float32))
        y = bn(tf.constant(x, tf.bfloat16), training=True)
        assert y.dtype == tf.bfloat16 and bn.moving_mean.dtype == tf.float32
        outs.append((tf.cast(y, tf.float32).numpy(), bn.moving_mean.numpy()))
    np.testing.assert_allclose(outs[1][0], outs[0][0], atol=0.05)  # bfloat16 rounding
    np.testing.assert_allclose(outs[1][1], outs[0][1], rtol=1e-5)


def test_other_configurations_take_keras_own_path():
    """No centre / no scale (the head's output BN) is Keras' code, unchanged."""
    x = tf.constant(_data((16, 5))[0], tf.float32)
    ours = BatchNorm(center=False, scale=False)
    theirs = keras.layers.BatchNormalization(center=False, scale=False)
    np.testing.assert_allclose(ours(x, training=True), theirs(x, training=True), atol=1e-6)
    assert not ours.trainable_variables


def test_saved_and_loaded_as_a_keras_layer(tmp_path):
    inputs = keras.Input([4])
    model = keras.Model(inputs, BatchNorm(name="bn")(inputs))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("bn"), BatchNorm)


def _bn_layer_on_mesh(mesh, shape, gamma, beta, fused, dtype="float32"):
    bn = BatchNorm(momentum=0.9, epsilon=EPS, dtype=dtype)
    bn.build(shape)
    bn.gamma.assign(gamma.astype(np.float32))
    bn.beta.assign(beta.astype(np.float32))
    bn.use_fused_kernel = fused
    model = keras.Sequential([keras.Input(shape[1:]), bn])
    layouts.replicate_model_variables(model, mesh)
    return bn


def _training_pass(bn, x, w):
    """(y, d sum(y w) / d (x, gamma, beta)) of a training-mode pass, in a tf.function."""
    @tf.function
    def run(x, w):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = bn(x, training=True)
            loss = tf.reduce_sum(y * w)
        return (y, *tape.gradient(loss, [x, bn.gamma, bn.beta]))

    return run(x, w)


@pytest.mark.parametrize("shape", [(16, 5, 5, 6), (32, 7)])
def test_fused_kernel_on_a_one_device_mesh_matches_float64(shape):
    """The fused kernel (a 1-device mesh, float32): output, the gradients of x, gamma and
    beta, and the moving statistics (population variance, as Keras' and the closed
    form's) equal the float64 reference; the closed form on the same mesh agrees."""
    mesh = parallel.build_mesh(1)
    x, w, gamma, beta = _data(shape)
    y_ref, dx_ref, dgamma_ref, dbeta_ref, mean_ref, var_ref = _reference(x, w, gamma, beta)
    replicated = layouts.replicated_layout(mesh, len(shape))
    xd, wd = (tf.experimental.dtensor.copy_to_mesh(tf.constant(v, tf.float32), replicated)
              for v in (x, w))
    for fused in (True, False):
        bn = _bn_layer_on_mesh(mesh, shape, gamma, beta, fused)
        got = [parallel.to_numpy(t) for t in _training_pass(bn, xd, wd)]
        scale = np.abs(x).max()
        for value, want in zip(got, (y_ref, dx_ref, dgamma_ref, dbeta_ref)):
            np.testing.assert_allclose(value, want, rtol=2e-4, atol=2e-4 * scale)
        np.testing.assert_allclose(parallel.to_numpy(bn.moving_mean), 0.1 * mean_ref,
                                   rtol=1e-5)
        np.testing.assert_allclose(parallel.to_numpy(bn.moving_variance),
                                   0.9 + 0.1 * var_ref, rtol=1e-5)


def test_fused_kernel_takes_bfloat16_and_keeps_float32_statistics():
    mesh = parallel.build_mesh(1)
    x, _, gamma, beta = _data((8, 4, 4, 6))
    bn = _bn_layer_on_mesh(mesh, x.shape, gamma, beta, True, dtype="mixed_bfloat16")
    xd = tf.experimental.dtensor.copy_to_mesh(tf.constant(x, tf.bfloat16),
                                              layouts.replicated_layout(mesh, 4))
    y = tf.function(lambda x: bn(x, training=True))(xd)
    assert y.dtype == tf.bfloat16 and bn.moving_mean.dtype == tf.float32
    y_ref, *_, mean_ref, _ = _reference(x, x, gamma, beta)
    np.testing.assert_allclose(parallel.to_numpy(tf.cast(y, tf.float32)), y_ref, atol=0.1)
    np.testing.assert_allclose(parallel.to_numpy(bn.moving_mean), 0.1 * mean_ref, rtol=1e-2)


@pytest.mark.parametrize("devices", [1, 2])
def test_training_takes_the_fused_kernel_only_where_the_batch_is_on_one_device(devices,
                                                                              tmp_path):
    from tf_instcls.training import loop

    mesh = parallel.build_mesh(devices)
    for kernel in ("auto", "closed_form"):
        state = loop.build_state(
            str(tmp_path / kernel), loop.DataConfig(image_size=16),
            loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=16,
                             batchnorm_kernel=kernel),
            loop.OptimConfig(), loop.TrainConfig(epochs=1, batch_size=64, verbose=0),
            mesh, monitor=loop.MonitorConfig(every_epochs=0))
        layers = [layer for layer in state.encoder._flatten_layers()
                  if isinstance(layer, BatchNorm)]
        assert {layer.use_fused_kernel for layer in layers} == {
            kernel == "auto" and devices == 1}
        assert len(layers) == 5  # convnet_small's 4 and the head's


def test_importing_tf_instcls_first_turns_on_onednn_unless_the_user_chose():
    """tf_instcls sets TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow reads it (the fused BN
    and the convolutions' oneDNN kernels); a user's own setting wins."""
    import subprocess
    import sys

    from helpers import subprocess_env

    code = ("import tf_instcls, tensorflow\n"
            "from tensorflow.python.util import _pywrap_util_port\n"
            "print(_pywrap_util_port.IsMklEnabled(), tf_instcls.ONEDNN_FROM_ENVIRONMENT)")
    for value, want in ((None, "True False"), ("0", "False True"), ("1", "True True")):
        env = {k: v for k, v in subprocess_env().items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        if value is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = value
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.stdout.strip().splitlines()[-1] == want, (value, done.stderr[-1000:])


def test_bfloat16_on_a_cpu_that_emulates_it_is_warned_about(tmp_path, caplog):
    from tf_instcls.training import loop

    state_args = dict(data=loop.DataConfig(image_size=16),
                      model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16,
                                             embedding_dim=16, precision="mixed_bfloat16"),
                      optim=loop.OptimConfig(),
                      train=loop.TrainConfig(epochs=1, batch_size=64, verbose=0),
                      mesh=parallel.build_mesh(1), monitor=loop.MonitorConfig(every_epochs=0))
    with caplog.at_level("WARNING"):
        loop.build_state(str(tmp_path), **state_args)
    warned = [r for r in caplog.records if "without native bfloat16" in r.getMessage()]
    assert len(warned) == int(parallel.cpu_emulates_bfloat16())


def test_use_fused_batchnorm_reaches_the_backbone_inside_the_encoder():
    from tf_instcls import models

    encoder = models.build_encoder("resnet18_cifar", 16, head_hidden_dim=16, backbone_width=4)
    found = [layer for layer in encoder._flatten_layers() if isinstance(layer, BatchNorm)]
    assert models.use_fused_batchnorm(encoder) == len(found) == 21  # 20 + the head's
    assert all(layer.use_fused_kernel for layer in found)
    models.use_fused_batchnorm(encoder, False)
    assert not any(layer.use_fused_kernel for layer in found)

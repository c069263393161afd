"""Every registered backbone: forward shape and a backward pass with finite gradients."""

import numpy as np
import pytest
import tensorflow as tf

from tf_instcls import models


@pytest.mark.parametrize("name", models.backbone_names())
def test_every_backbone_forward_and_backward(name):
    size = 32
    width = None if name == "resnet50" else 8
    encoder = models.build_encoder(name, size, embedding_dim=16, head_hidden_dim=32,
                                   backbone_width=width)
    images = tf.random.normal([2, size, size, 3])
    with tf.GradientTape() as tape:
        out = encoder(images, training=True)
        loss = tf.reduce_sum(out["embedding"] ** 2)
    grads = tape.gradient(loss, encoder.trainable_variables)
    assert out["embedding"].shape == (2, 16)
    assert out["features"].shape[0] == 2
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)


def test_no_head_option_maps_features_linearly():
    encoder = models.build_encoder("convnet_small", 16, embedding_dim=8, use_head=False,
                                   backbone_width=4)
    assert not any("head_bn" in v.path for v in encoder.variables)
    assert encoder(tf.zeros([1, 16, 16, 3]))["embedding"].shape == (1, 8)


def test_resnet18_cifar_stem_keeps_resolution():
    net = models.create_backbone("resnet18_cifar", 32, width=4)
    stem = net.get_layer("stem_conv")
    assert stem.kernel_size == (3, 3) and stem.strides == (1, 1)
    assert not any("pool" in layer.name and "max" in layer.name.lower() for layer in net.layers)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        models.create_backbone("vgg", 32)


def test_mixed_bfloat16_encoder_keeps_float32_variables_and_outputs():
    """16-bit compute inside, float32 variables, inputs and outputs; the global Keras
    policy is left as it was; close to the float32 encoder with the same weights."""
    import keras

    mixed = models.build_encoder("convnet_small", 16, embedding_dim=8, head_hidden_dim=16,
                                 backbone_width=4, precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"
    plain = models.build_encoder("convnet_small", 16, embedding_dim=8, head_hidden_dim=16,
                                 backbone_width=4)
    assert all(v.dtype == "float32" for v in mixed.variables)
    for target, source in zip(plain.variables, mixed.variables):
        target.assign(source)
    images = tf.random.normal([4, 16, 16, 3], seed=1)
    out = mixed(images, training=False)
    assert out["features"].dtype == tf.float32 and out["embedding"].dtype == tf.float32
    reference = plain(images, training=False)["embedding"].numpy()
    err = np.abs(out["embedding"].numpy() - reference).max() / np.abs(reference).max()
    assert 0 < err < 0.05  # bfloat16 rounding, not another network
    with pytest.raises(ValueError, match="precision must be one of"):
        models.build_encoder("convnet_small", 16, precision="float16")


def test_feature_extraction_cache_reuses_its_function_and_lets_the_encoder_go():
    import gc
    import weakref

    from tf_instcls import parallel
    from tf_instcls.parallel import features as features_lib

    mesh = parallel.build_mesh(1)
    encoder = models.build_encoder("convnet_small", 16, embedding_dim=8, head_hidden_dim=16,
                                   backbone_width=4)
    images = np.random.default_rng(0).uniform(size=(2, 4, 16, 16, 3)).astype(np.float32)
    first = features_lib.run_encoder(encoder, images, mesh)
    function = features_lib._inference_fn(encoder)
    again = features_lib.run_encoder(encoder, images, mesh)
    assert features_lib._inference_fn(encoder) is function  # cached: not re-traced
    assert function.experimental_get_tracing_count() == 1
    np.testing.assert_array_equal(first["embedding"], again["embedding"])
    assert first["embedding"].shape == (8, 8)
    alive = weakref.ref(encoder)
    del encoder, function
    gc.collect()
    assert alive() is None  # the cache kept no encoder (and no variables) alive


@pytest.mark.slow
def test_a_new_backbone_is_one_registered_function_and_trains(tmp_path, monkeypatch):
    """WORKSPACE.md's "How to add a backbone": one function under ``register_backbone``;
    ``ModelConfig.backbone`` then picks it for pretraining, and the export restores it."""
    import keras

    from tf_instcls import export, parallel, pretrain
    from tf_instcls.models import backbones
    from tf_instcls.training import loop

    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))

    @backbones.register_backbone("tiny_mlp")
    def tiny_mlp(image_size: int, width: int = 16) -> keras.Model:
        images = keras.Input([image_size, image_size, 3])
        x = keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(images))
        x = keras.layers.Dense(width, name="fc")(x)
        x = keras.layers.BatchNormalization(name="bn")(x)
        return keras.Model(images, keras.layers.ReLU()(x), name="tiny_mlp")

    assert "tiny_mlp" in models.backbone_names()
    configs = dict(
        data=loop.DataConfig(dataset="synthetic:64:16", image_size=16),
        model=loop.ModelConfig(backbone="tiny_mlp", backbone_width=8, embedding_dim=8,
                               head_hidden_dim=16),
        optim=loop.OptimConfig(warmup_epochs=0, base_learning_rate=0.1),
        method=loop.FullConfig(num_hard_negatives=4),
        monitor=loop.MonitorConfig(every_epochs=0),
    )
    train = loop.TrainConfig(epochs=1, batch_size=16, verbose=0)
    logs = pretrain.run_pretraining(str(tmp_path / "run"), **configs, train=train,
                                    mesh=parallel.build_mesh(2))
    assert logs["step"] == 4 and np.isfinite(logs["loss"])
    restored = export.restore_encoder(str(tmp_path / "run"))
    assert restored.encoder(tf.zeros([1, 16, 16, 3]))["features"].shape == (1, 8)


@pytest.mark.slow
def test_head_output_bn_centres_the_embeddings_and_the_run_restores_it(tmp_path):
    """``ModelConfig.head_output_bn``: in training the head's output has zero batch mean
    and unit variance per dimension (the paper's head does not); a run with it restores
    and exports the same architecture, with the same embeddings as in memory."""
    from tf_instcls import export, parallel, pretrain
    from tf_instcls.data import ImageSource
    from tf_instcls.parallel import layouts
    from tf_instcls.parallel.features import extract_features
    from tf_instcls.training import loop

    images = tf.random.stateless_uniform([16, 16, 16, 3], seed=[1, 2])
    for output_bn in (False, True):
        encoder = models.build_encoder("convnet_small", 16, embedding_dim=8,
                                       head_hidden_dim=16, backbone_width=4,
                                       head_output_bn=output_bn)
        emb = encoder(images, training=True)["embedding"].numpy().astype(np.float64)
        centred = np.abs(emb.mean(0)).max() < 1e-5 and np.allclose(emb.std(0), 1, atol=1e-3)
        assert centred == output_bn
    with pytest.raises(ValueError, match="needs the MLP head"):
        models.build_encoder("convnet_small", 16, use_head=False, head_output_bn=True)

    configs = dict(
        data=loop.DataConfig(dataset="synthetic:64:16", image_size=16),
        model=loop.ModelConfig(backbone="convnet_small", backbone_width=4, embedding_dim=8,
                               head_hidden_dim=16, head_output_bn=True),
        optim=loop.OptimConfig(warmup_epochs=0, base_learning_rate=0.1),
        train=loop.TrainConfig(epochs=1, batch_size=16, verbose=0),
        method=loop.FullConfig(num_hard_negatives=4),
        monitor=loop.MonitorConfig(every_epochs=0),
    )
    mesh = parallel.build_mesh(2)
    model_dir = str(tmp_path / "run")
    logs = pretrain.run_pretraining(model_dir, **configs, mesh=mesh)
    assert logs["step"] == 4 and np.isfinite(logs["loss"])
    state = loop.build_state(model_dir, **configs, mesh=mesh)
    pixels = np.random.RandomState(0).randint(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    source = ImageSource(name="check", num_images=6, image_size=(16, 16), images=pixels)
    want = extract_features(state.encoder, source, 16, mesh, batch_size=2)["embedding"]
    restored = export.restore_encoder(model_dir)
    assert any("head_out_bn" in v.path for v in restored.encoder.variables)
    layouts.replicate_model_variables(restored.encoder, mesh)
    got = extract_features(restored.encoder, source, 16, mesh, batch_size=2)["embedding"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="head_output_bn = True needs the MLP head"):
        loop.validate_configs(configs["data"], loop.ModelConfig(use_head=False,
                              head_output_bn=True))

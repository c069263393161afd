"""The prior writes exactly the network's embeddings into the right rows, per mode."""

import numpy as np
import pytest

from tf_instcls import data as data_lib
from tf_instcls import models, parallel
from tf_instcls.callbacks import ContrastivePrior
from tf_instcls.parallel import layouts


class _State:
    def __init__(self, mesh, source, step=0, unit_norm_rows=False):
        self.mesh, self.train_source, self.image_size = mesh, source, 16
        self.encoder = models.build_encoder("convnet_small", 16, embedding_dim=8,
                                            head_hidden_dim=8, backbone_width=4)
        layouts.replicate_model_variables(self.encoder, mesh)
        self.classifier = parallel.InstanceClassifier(source.num_images, 8, mesh=mesh,
                                                      layout="sharded", seed=1,
                                                      unit_norm_rows=unit_norm_rows)
        self.step = step

    def prior(self, mode, batch_size):
        """The callback given what it reads from this state."""
        return ContrastivePrior(encoder=self.encoder, classifier=self.classifier,
                                source=self.train_source, image_size=self.image_size,
                                mesh=self.mesh, step=lambda: self.step, mode=mode,
                                batch_size=batch_size)


def _reference_embeddings(state, training):
    """The same pass done plainly, batch by batch in id order, on the host."""
    out = []
    ds = data_lib.make_eval_dataset(state.train_source, 16, batch_size=8)
    for batch in ds:
        images = parallel.pack_sharded(batch["images"].numpy(),
                                       parallel.batch_layout(state.mesh, 4))
        emb = state.encoder(images, training=training)  # eager, not the callback's function
        out.append(parallel.to_numpy(emb["embedding"]))
    return np.concatenate(out)[: state.train_source.num_images]


@pytest.mark.parametrize("mode", ["prior_fixed_bn", "prior_running_bn"])
def test_prior_rows_equal_the_network_embeddings(mode):
    mesh = parallel.build_mesh(4)
    source = data_lib.load_source("digits").subset(np.arange(30), "thirty")  # 30: padded to 32
    state = _State(mesh, source)
    bn = [v for v in state.encoder.non_trainable_variables if "moving_mean" in v.path][0]
    bn_before = parallel.to_numpy(layouts.variable_handle(bn)).copy()
    state.prior(mode, 8).on_train_begin()
    w = parallel.to_numpy(state.classifier.class_weights)
    bn_after = parallel.to_numpy(layouts.variable_handle(bn))
    if mode == "prior_fixed_bn":
        np.testing.assert_array_equal(bn_after, bn_before)
        expected = _reference_embeddings(state, training=False)
        np.testing.assert_allclose(w[:30], expected, rtol=1e-4, atol=1e-5)
    else:
        assert not np.allclose(bn_after, bn_before), "running BN must update its statistics"
    assert np.all(w[30:] == 0), "padding rows stay zero"
    assert state.classifier.class_weights.layout.sharding_specs[0] == "batch"


def test_running_bn_rows_are_batch_statistics_embeddings():
    """Running-BN rows differ from fixed-BN rows, and equal a batch-stats pass."""
    mesh = parallel.build_mesh(1)
    source = data_lib.load_source("digits").subset(np.arange(16), "sixteen")
    state = _State(mesh, source)
    expected = None
    weights = [parallel.to_numpy(layouts.variable_handle(v)).copy()
               for v in state.encoder.variables]
    ds = data_lib.make_eval_dataset(source, 16, batch_size=16)
    images = next(iter(ds))["images"].numpy()
    state.prior("prior_running_bn", 16).on_train_begin()
    w = parallel.to_numpy(state.classifier.class_weights)
    # Restore the pre-pass weights and compute the batch-statistics embeddings directly.
    for v, value in zip(state.encoder.variables, weights):
        layouts.variable_handle(v).assign(parallel.pack_sharded(
            value, parallel.replicated_layout(mesh, value.ndim)))
    expected = parallel.to_numpy(state.encoder(
        parallel.pack_sharded(images, parallel.batch_layout(mesh, 4)), training=True
    )["embedding"])
    np.testing.assert_allclose(w, expected, rtol=1e-4, atol=1e-5)


def test_unit_norm_classifier_gets_the_normalised_prior():
    """With unit-norm rows W holds the embeddings' directions (fixed BN: exactly the
    normalised network embeddings); the padding rows stay zero."""
    mesh = parallel.build_mesh(4)
    source = data_lib.load_source("digits").subset(np.arange(30), "thirty")
    state = _State(mesh, source, unit_norm_rows=True)
    state.prior("prior_fixed_bn", 8).on_train_begin()
    w = parallel.to_numpy(state.classifier.class_weights)
    expected = _reference_embeddings(state, training=False)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(w[:30], expected, rtol=1e-4, atol=1e-5)
    assert np.all(w[30:] == 0)


def test_resumed_run_does_not_reinitialise_w():
    mesh = parallel.build_mesh(2)
    source = data_lib.load_source("digits").subset(np.arange(10), "ten")
    state = _State(mesh, source, step=5)
    before = parallel.to_numpy(state.classifier.class_weights).copy()
    state.prior("prior_running_bn", 8).on_train_begin()
    np.testing.assert_array_equal(parallel.to_numpy(state.classifier.class_weights), before)


def test_unknown_mode():
    with pytest.raises(ValueError, match="init mode must be one of"):
        ContrastivePrior(encoder=None, classifier=None, source=None, image_size=16,
                         mesh=None, step=lambda: 0, mode="kaiming")

"""The method registry: each method owns its config, its state, whether W is trained,
its loss and its post-update; the train step is the common path around it."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import gin
from tf_instcls import methods, parallel
from tf_instcls.methods import METHODS, Method, MethodConfig
from tf_instcls.parallel import layouts


def test_the_registry_holds_every_method_and_says_who_trains_w():
    assert {name: cls.trains_w for name, cls in METHODS.items()} == {
        "full": True, "sampled": True, "npid": False, "simclr": False}
    assert all(cls.name == name == cls.config_class.method for name, cls in METHODS.items())


def test_each_method_says_what_it_mines_and_checks_its_own_values():
    assert methods.FullConfig().num_hard_negatives_mined == 100
    assert methods.FullConfig(smoothing=0.0).num_hard_negatives_mined == 0  # Eq. 1
    for config in (methods.SampledConfig(), methods.NPIDConfig(), methods.SimCLRConfig()):
        assert config.num_hard_negatives_mined == 0
    assert methods.SimCLRConfig().views_needed == 2 and methods.NPIDConfig().views_needed == 1
    assert methods.NPIDConfig(z_estimate="never").problems() == [
        "NPIDConfig.z_estimate must be one of ('first', 'epoch', 'step'); got 'never'"]
    assert methods.NPIDConfig(noise=300).problems_with_data(300) != []
    assert methods.NPIDConfig(noise=299).problems_with_data(300) == []
    with pytest.raises(ValueError, match="must be the same non-empty name"):
        methods.register(type("Nameless", (Method,), {}))


@dataclasses.dataclass(frozen=True)
class AlignConfig(MethodConfig):
    """The toy method's own hyperparameters (bound in gin as ``AlignConfig.margin``)."""

    method = "align"
    margin: float = 1.0

    def problems(self):
        return super().problems() + ([] if self.margin > 0 else
                                     ["AlignConfig.margin must be > 0"])


class _Align(Method):
    """A toy method as WORKSPACE.md's "How to add a method" writes one: its own config,
    pull each instance's two views together, count the applied steps in its own
    variable."""

    name = "align"
    config_class = AlignConfig

    def __init__(self, config, classifier, **kwargs):
        super().__init__(config, classifier, **kwargs)
        self.updates = layouts.replicated_variable(0, classifier.mesh, "align_updates",
                                                   tf.int64)

    def variables(self):
        return {"align_updates": self.updates}

    def loss(self, batch):
        d = batch.embedding.shape[-1]
        views = tf.math.l2_normalize(tf.reshape(batch.embedding, [-1, 2, d]), axis=-1)
        first, second = tf.unstack(views, num=2, axis=1)
        loss = self.config.margin - tf.reduce_sum(first * second, axis=-1)  # [b]
        return loss, tf.zeros_like(loss)

    def post_update(self, batch, finite):
        self.updates.assign_add(tf.cast(finite, tf.int64))


def test_a_new_method_is_one_file_with_its_own_gin_configurable_config(tmp_path,
                                                                        monkeypatch):
    from tf_instcls import pretrain
    from tf_instcls.cli import gin_config
    from tf_instcls.training import loop

    monkeypatch.setitem(METHODS, "align", _Align)
    methods.register(_Align)
    # gin binds the new method's config under its class name, like the built-in ones
    gin.clear_config(clear_constants=True)
    run = gin_config.configs_from_gin([], ["MethodConfig.name = 'align'",
                                           "AlignConfig.margin = 0.5"], search_path=None)
    assert run.method == AlignConfig(margin=0.5)
    with pytest.raises(ValueError, match="AlignConfig.margin must be > 0"):
        loop.validate(dataclasses.replace(run, method=AlignConfig(margin=0.0)))
    mesh = parallel.build_mesh(2)
    configs = dict(
        data=loop.DataConfig(dataset="synthetic:128:16", image_size=16),
        model=loop.ModelConfig(backbone_width=4, embedding_dim=8, head_hidden_dim=16),
        method=run.method,
        classifier=loop.ClassifierConfig(init_mode="gaussian"),
        monitor=loop.MonitorConfig(every_epochs=0),
        optim=loop.OptimConfig(warmup_epochs=0, base_learning_rate=0.1),
    )
    train = loop.TrainConfig(epochs=2, batch_size=32, verbose=0)
    logs = pretrain.run_pretraining(str(tmp_path / "run"), **configs, train=train, mesh=mesh)
    assert logs["step"] == 8 and np.isfinite(logs["loss"]) and logs["loss"] < 0.5
    # its state went into the checkpoint, through the method, and comes back on resume
    state = loop.build_state(str(tmp_path / "run"), **configs, train=train, mesh=mesh)
    assert isinstance(state.method, _Align)
    assert int(parallel.to_numpy(state.method.updates)) == 8
    # trains_w = False: the optimizer never touched W (a fresh run's initial W)
    fresh = loop.build_state(str(tmp_path / "fresh"), **configs, train=train, mesh=mesh)
    np.testing.assert_array_equal(parallel.to_numpy(state.classifier.class_weights),
                                  parallel.to_numpy(fresh.classifier.class_weights))
    assert not state.optimizer.has_slot(state.classifier.class_weights)

"""The method registry: each method owns its state, whether W is trained, its loss and
its post-update; the train step is the common path around it."""

import numpy as np
import tensorflow as tf

from tf_instcls import parallel
from tf_instcls.methods import METHODS, Method
from tf_instcls.parallel import layouts


def test_the_registry_holds_every_method_and_says_who_trains_w():
    assert {name: cls.trains_w for name, cls in METHODS.items()} == {
        "full": True, "sampled": True, "npid": False, "simclr": False}
    assert all(cls.name == name for name, cls in METHODS.items())


class _Align(Method):
    """A toy method as WORKSPACE.md's "How to add a method" writes one: pull each
    instance's two views together, count the applied steps in its own variable."""

    name = "align"

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
        loss = 1.0 - tf.reduce_sum(first * second, axis=-1)  # [b]
        return loss, tf.zeros_like(loss)

    def post_update(self, batch, finite):
        self.updates.assign_add(tf.cast(finite, tf.int64))


def test_a_new_method_is_one_class_and_one_registry_entry(tmp_path, monkeypatch):
    from tf_instcls import pretrain
    from tf_instcls.training import loop

    monkeypatch.setitem(METHODS, "align", _Align)
    mesh = parallel.build_mesh(2)
    configs = dict(
        data=loop.DataConfig(dataset="synthetic:128:16", image_size=16),
        model=loop.ModelConfig(backbone_width=4, embedding_dim=8, head_hidden_dim=16),
        method=loop.MethodConfig(name="align", smoothing=0.0),
        classifier=loop.ClassifierConfig(init_mode="gaussian"),
        monitor=loop.MonitorConfig(every_epochs=0),
        optim=loop.OptimConfig(warmup_epochs=0, base_learning_rate=0.1),
    )
    train = loop.TrainConfig(epochs=2, batch_size=32, verbose=0)
    logs = pretrain.run_pretraining(str(tmp_path / "run"), **configs, train=train, mesh=mesh)
    assert logs["step"] == 8 and np.isfinite(logs["loss"]) and logs["loss"] < 1.0
    # its state went into the checkpoint, through the method, and comes back on resume
    state = loop.build_state(str(tmp_path / "run"), **configs, train=train, mesh=mesh)
    assert isinstance(state.method, _Align)
    assert int(parallel.to_numpy(state.method.updates)) == 8
    # trains_w = False: the optimizer never touched W (a fresh run's initial W)
    fresh = loop.build_state(str(tmp_path / "fresh"), **configs, train=train, mesh=mesh)
    np.testing.assert_array_equal(parallel.to_numpy(state.classifier.class_weights),
                                  parallel.to_numpy(fresh.classifier.class_weights))
    assert not state.optimizer.has_slot(state.classifier.class_weights)

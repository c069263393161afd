"""ModelConfig.precision = "mixed_bfloat16" on CPU: the step trains with bfloat16
compute and float32 variables, a resumed run replays the uninterrupted one exactly, and
the export (float32, rebuilt from the checkpoint) serves float32 in and out."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_instcls import export, parallel, pretrain
from tf_instcls.data import ImageSource
from tf_instcls.parallel import layouts
from tf_instcls.parallel.features import extract_features
from tf_instcls.training import checkpoints, loop

CONFIGS = dict(
    data=loop.DataConfig(image_size=16),
    model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=16,
                           precision="mixed_bfloat16"),
    optim=loop.OptimConfig(warmup_epochs=0),
    method=loop.FullConfig(num_hard_negatives=8),
    monitor=loop.MonitorConfig(every_epochs=0),
)
TRAIN = loop.TrainConfig(epochs=2, batch_size=256, verbose=0, log_steps=True,
                         deterministic=True)


class _Interrupted(Exception):
    pass


class _InterruptAfterEpoch(keras.callbacks.Callback):
    """Stops the run after an epoch, once its checkpoint is written (a kill)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Interrupted()


def _assert_interrupted_run_replays(configs, straight, resumed, mesh):
    """The run of ``straight``, interrupted after epoch 1 and resumed in ``resumed``,
    logs the same loss at every step."""
    with pytest.raises(_Interrupted):
        pretrain.run_pretraining(resumed, **configs, train=TRAIN, mesh=mesh,
                             callbacks=[_InterruptAfterEpoch(0)])
    pretrain.run_pretraining(resumed, **configs, train=TRAIN, mesh=mesh)
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 11))
    np.testing.assert_array_equal([a[k] for k in sorted(a)], [b[k] for k in sorted(b)])


def _losses(model_dir):
    with open(f"{model_dir}/steps.jsonl") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if r}


@pytest.mark.slow
def test_bfloat16_trains_resumes_exactly_and_exports_float32(tmp_path):
    mesh = parallel.build_mesh(2)
    straight = str(tmp_path / "straight")
    logs = pretrain.run_pretraining(straight, **CONFIGS, train=TRAIN, mesh=mesh)
    assert logs["step"] == 10 and np.isfinite(logs["loss"])
    state = loop.build_state(straight, **CONFIGS, train=TRAIN, mesh=mesh)
    assert any(v.path.endswith("kernel") for v in state.encoder.trainable_variables)
    assert all(v.dtype == "float32" for v in state.encoder.variables)  # float32 storage
    assert state.encoder.layers[1].compute_dtype == "bfloat16"  # bfloat16 compute
    reader = tf.train.load_checkpoint(state.manager.latest_checkpoint)
    assert reader.get_tensor(checkpoints.W_KEY).dtype == np.float32

    _assert_interrupted_run_replays(CONFIGS, straight, str(tmp_path / "resumed"), mesh)

    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    source = ImageSource(name="x", num_images=4, image_size=(16, 16), images=images)
    in_memory = extract_features(state.encoder, source, 16, mesh, batch_size=2)
    assert in_memory["features"].dtype == np.float32
    restored = export.restore_encoder(straight)
    path = export.export_encoder(restored.encoder, str(tmp_path / "export"),
                                 image_size=restored.image_size, step=restored.step,
                                 run_info=restored.run_info)
    served = tf.saved_model.load(path).signatures["serving_default"](
        images=tf.constant(images))
    assert served["features"].dtype == tf.float32 and served["embedding"].dtype == tf.float32
    # the float32 export of the bfloat16-trained weights: equal up to bfloat16 rounding
    np.testing.assert_allclose(served["features"].numpy(), in_memory["features"],
                               rtol=0.05, atol=0.05)


F16 = dict(CONFIGS, model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16,
                                            embedding_dim=16, precision="mixed_float16"))


@pytest.mark.slow
def test_float16_trains_with_a_loss_scale_and_resumes_exactly(tmp_path):
    mesh = parallel.build_mesh(2)
    straight = str(tmp_path / "straight")
    logs = pretrain.run_pretraining(straight, **F16, train=TRAIN, mesh=mesh)
    assert logs["step"] == 10 and np.isfinite(logs["loss"])
    assert logs["loss_scale"] == 32768.0  # no overflow at this size: the initial scale
    state = loop.build_state(straight, **F16, train=TRAIN, mesh=mesh)
    assert state.encoder.layers[1].compute_dtype == "float16"
    assert all(v.dtype == "float32" for v in state.encoder.variables)
    reader = tf.train.load_checkpoint(state.manager.latest_checkpoint)
    assert reader.get_tensor(checkpoints.checkpoint_key("loss_scale")) == 32768.0
    assert reader.get_tensor(checkpoints.checkpoint_key("loss_scale_good_steps")) == 10

    _assert_interrupted_run_replays(F16, straight, str(tmp_path / "resumed"), mesh)


class _Weights(keras.callbacks.Callback):
    """W and a backbone kernel as the first step finds them (after the prior)."""

    def __init__(self, state_holder):
        super().__init__()
        self.holder, self.before = state_holder, None

    def on_train_batch_begin(self, batch, logs=None):
        if self.before is None:
            self.before = self.holder()


@pytest.mark.slow
def test_float16_overflow_skips_the_step_halves_the_scale_and_goes_on(tmp_path, monkeypatch):
    """A scale of 2^100 overflows float16's backward pass (max 65,504) on every step:
    each step is skipped (W and the backbone untouched) and halves the scale; the run is
    not stopped by the non-finite guard, and the scale is checkpointed."""
    mesh = parallel.build_mesh(2)
    model_dir = str(tmp_path / "run")
    optim = loop.OptimConfig(warmup_epochs=0, initial_loss_scale=2.0 ** 100)
    train = loop.TrainConfig(**{**TRAIN.__dict__, "epochs": 1})
    configs = dict(F16, optim=optim)
    probe = {}

    def weights():
        return [parallel.to_numpy(probe["state"].classifier.class_weights),
                parallel.to_numpy(layouts.variable_handle(
                    probe["state"].encoder.trainable_variables[0]))]

    real_build = loop.build_state

    def build(*args, **kwargs):
        probe["state"] = real_build(*args, **kwargs)
        return probe["state"]

    recorder = _Weights(weights)
    monkeypatch.setattr(loop, "build_state", build)
    logs = pretrain.run_pretraining(model_dir, **configs, train=train, mesh=mesh,
                                callbacks=[recorder])
    assert logs["step"] == 5 and logs["loss_scale"] == 2.0 ** 96  # the 5th step's scale
    for before, after in zip(recorder.before, weights()):
        np.testing.assert_array_equal(before, after)
    reader = tf.train.load_checkpoint(probe["state"].manager.latest_checkpoint)
    assert reader.get_tensor(checkpoints.checkpoint_key("loss_scale")) == 2.0 ** 95

"""ModelConfig.precision = "mixed_bfloat16" on CPU: the step trains with bfloat16
compute and float32 variables, a resumed run replays the uninterrupted one exactly, and
the export (float32, rebuilt from the checkpoint) serves float32 in and out."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_instcls import export, parallel
from tf_instcls.data import ImageSource
from tf_instcls.eval.features import extract_features
from tf_instcls.training import checkpoints, loop

CONFIGS = dict(
    data=loop.DataConfig(image_size=16),
    model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=16,
                           precision="mixed_bfloat16"),
    optim=loop.OptimConfig(warmup_epochs=0),
)
TRAIN = loop.TrainConfig(epochs=2, batch_size=256, verbose=0, num_hard_negatives=8,
                         knn_every_epochs=0, log_steps=True, deterministic=True)


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


def _losses(model_dir):
    with open(f"{model_dir}/steps.jsonl") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if r}


@pytest.mark.slow
def test_bfloat16_trains_resumes_exactly_and_exports_float32(tmp_path):
    mesh = parallel.build_mesh(2)
    straight = str(tmp_path / "straight")
    logs = loop.run_pretraining(straight, **CONFIGS, train=TRAIN, mesh=mesh)
    assert logs["step"] == 10 and np.isfinite(logs["loss"])
    state = loop.build_state(straight, **CONFIGS, train=TRAIN, mesh=mesh)
    assert any(v.path.endswith("kernel") for v in state.encoder.trainable_variables)
    assert all(v.dtype == "float32" for v in state.encoder.variables)  # float32 storage
    assert state.encoder.layers[1].compute_dtype == "bfloat16"  # bfloat16 compute
    reader = tf.train.load_checkpoint(state.manager.latest_checkpoint)
    assert reader.get_tensor(checkpoints.W_KEY).dtype == np.float32

    resumed = str(tmp_path / "resumed")  # the same run, interrupted after epoch 1
    with pytest.raises(_Interrupted):
        loop.run_pretraining(resumed, **CONFIGS, train=TRAIN, mesh=mesh,
                             callbacks=[_InterruptAfterEpoch(0)])
    loop.run_pretraining(resumed, **CONFIGS, train=TRAIN, mesh=mesh)
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 11))
    np.testing.assert_array_equal([a[k] for k in sorted(a)], [b[k] for k in sorted(b)])

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


def test_float16_is_refused_with_the_reason():
    bad = dict(CONFIGS, model=loop.ModelConfig(precision="mixed_float16"))
    with pytest.raises(ValueError, match=r"precision must be 'float32' or 'mixed_bfloat16'; "
                                         r"got 'mixed_float16' \(float16 needs loss scaling"):
        loop.validate_configs(bad["data"], bad["model"], bad["optim"], TRAIN)

"""run_pretraining in-process: user callbacks see the usual hooks; a mismatched
model_dir is refused; BN statistics and W are on the mesh and change."""

import json

import keras
import numpy as np
import pytest

from tf_instcls import parallel, pretrain
from tf_instcls.parallel import layouts
from tf_instcls.training import loop

TINY = dict(
    data=loop.DataConfig(image_size=16),
    model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=16),
    optim=loop.OptimConfig(warmup_epochs=0),
)


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(f"epoch_begin:{epoch}")

    def on_train_batch_end(self, batch, logs=None):
        self.events.append("batch")
        assert {"loss", "instance_acc", "lr", "images_per_sec"} <= set(logs)

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end:{epoch}")
        assert "knn_top1" in logs  # the kNN monitor runs before user callbacks

    def on_train_end(self, logs=None):
        self.events.append("train_end")


@pytest.mark.slow
def test_run_pretraining_drives_user_callbacks_and_refuses_other_configs(tmp_path):
    mesh = parallel.build_mesh(2)
    train = loop.TrainConfig(epochs=1, batch_size=256, verbose=0)
    monitor = loop.MonitorConfig(k=10)
    recorder = Recorder()

    logs = pretrain.run_pretraining(str(tmp_path), TINY["data"], TINY["model"], TINY["optim"],
                                train, mesh, callbacks=[recorder], monitor=monitor)
    steps = 1527 // 256
    assert recorder.events == (["train_begin", "epoch_begin:0"] + ["batch"] * steps
                               + ["epoch_end:0", "train_end"])
    assert logs["knn_top1"] > 10 and np.isfinite(logs["loss"])
    record = json.loads(open(tmp_path / "metrics.jsonl").read().splitlines()[-1])
    assert record["epoch"] == 0 and "knn_top1" in record

    with pytest.raises(ValueError, match="different configuration.*embedding_dim"):
        other = loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=32)
        pretrain.run_pretraining(str(tmp_path), TINY["data"], other, TINY["optim"], train, mesh)


def test_encoder_variables_become_replicated_dvariables():
    from tensorflow.experimental import dtensor

    from tf_instcls import models

    mesh = parallel.build_mesh(4)
    encoder = models.build_encoder("convnet_small", 16, embedding_dim=8, head_hidden_dim=8,
                                   backbone_width=4)
    handles = layouts.replicate_model_variables(encoder, mesh)
    assert len(handles) == len(encoder.variables)
    for variable in encoder.variables:
        inner = layouts.variable_handle(variable)
        assert isinstance(inner, dtensor.DVariable)
        assert inner.layout.is_fully_replicated() and inner.layout.mesh == mesh


def test_batchnorm_statistics_are_over_the_global_batch():
    """On a batch-sharded input DTensor reduces BN's moments over all devices (SyncBN)."""
    mesh = parallel.build_mesh(4)
    inputs = keras.Input([3])
    bn = keras.layers.BatchNormalization(momentum=0.0, epsilon=0.0)
    model = keras.Model(inputs, bn(inputs))
    layouts.replicate_model_variables(model, mesh)
    # Each device's rows have a different mean: local statistics would differ.
    x = np.arange(24, dtype=np.float32).reshape(8, 3) ** 1.5
    out = model(parallel.pack_sharded(x, parallel.batch_layout(mesh, 2)), training=True)
    moving_mean = parallel.to_numpy(layouts.variable_handle(bn.moving_mean))
    moving_var = parallel.to_numpy(layouts.variable_handle(bn.moving_variance))
    np.testing.assert_allclose(moving_mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(moving_var, x.var(0), rtol=1e-4)
    np.testing.assert_allclose(parallel.to_numpy(out), (x - x.mean(0)) / x.std(0), atol=1e-4)


def test_the_epoch_line_is_readable_and_leaves_out_what_is_missing():
    from tf_instcls.callbacks.progress import epoch_line

    logs = {"epoch": 2.0, "loss": 5.12345, "instance_acc": 0.4567, "knn_top1": 61.234,
            "lr": 0.0299, "train_seconds": 10.0, "mining_seconds": 0.15, "step": 93.0}
    assert epoch_line(2, 120, logs, images=3968) == (
        "epoch 3/120: loss 5.1235, instance acc 45.7%, kNN top-1 61.23%, lr 0.0299, "
        "397 images/s, 10.0 s, mining 0.15 s")
    skipped = epoch_line(0, 2, {"lr": 0.1, "train_seconds": 2.0, "skipped_steps": 5.0})
    assert skipped == "epoch 1/2: lr 0.1, 2.0 s, 5 steps skipped (non-finite)"

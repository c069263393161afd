"""SimCLR's NT-Xent against a float64 numpy reference (loss and gradient), on a plain
tensor and on batch-sharded meshes of 1, 2 and 4 devices."""

import numpy as np
import pytest
import tensorflow as tf

from tf_instcls import parallel
from tf_instcls.losses.contrastive import nt_xent_loss

from helpers import assert_close


def _reference(x, t):
    """Per-view loss and d(sum loss)/dx of NT-Xent, float64, pairs (2i, 2i + 1)."""
    n = len(x)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    z = x / norm
    s = z @ z.T / t
    np.fill_diagonal(s, -np.inf)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    pos = np.arange(n) ^ 1
    loss = -np.log(p[np.arange(n), pos])
    ds = p.copy()  # d loss_k / d s_kj
    ds[np.arange(n), pos] -= 1
    dz = (ds @ z + ds.T @ z) / t  # s is symmetric in z
    dx = (dz - np.sum(dz * z, axis=1, keepdims=True) * z) / norm
    return loss, dx, s.argmax(axis=1) == pos


@pytest.mark.parametrize("devices", [None, 1, 2, 4])
@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_matches_numpy(devices, temperature):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 6))
    x[1] = x[0] + 0.1 * rng.normal(size=6)  # one clear positive pair: a hit
    loss_ref, grad_ref, hit_ref = _reference(x, temperature)
    mesh = None if devices is None else parallel.build_mesh(devices)
    if mesh is None:
        xd = tf.constant(x, tf.float32)
    else:
        xd = parallel.pack_sharded(x.astype(np.float32), parallel.batch_layout(mesh, 2))

    @tf.function
    def run(xd):
        with tf.GradientTape() as tape:
            tape.watch(xd)
            loss, hit = nt_xent_loss(xd, temperature=temperature, mesh=mesh)
            total = tf.reduce_sum(loss)
        return loss, hit, tape.gradient(total, xd)

    loss, hit, grad = (parallel.to_numpy(v) for v in run(xd))
    assert_close(loss, loss_ref, rtol=1e-5, name="loss")
    assert_close(grad, grad_ref, rtol=1e-4, name="dL/dx")
    assert np.array_equal(hit, hit_ref)
    assert hit[0] and hit[1]


def test_nt_xent_rejects_odd_view_count():
    with pytest.raises(ValueError, match="pairs of views"):
        nt_xent_loss(tf.zeros([5, 3]))


@pytest.mark.slow
def test_simclr_trains_without_w_and_resumes(tmp_path):
    """method = simclr: a 1-epoch run on 2 devices lowers NT-Xent below its start,
    gives W no optimizer slot and leaves it untouched, and resumes into epoch 2."""
    from tf_instcls import pretrain
    from tf_instcls.training import loop

    mesh = parallel.build_mesh(2)
    configs = dict(data=loop.DataConfig(image_size=16),
                   model=loop.ModelConfig(backbone_width=4, embedding_dim=16,
                                          head_hidden_dim=16),
                   method=loop.SimCLRConfig(temperature=0.5),
                   classifier=loop.ClassifierConfig(init_mode="gaussian"),
                   monitor=loop.MonitorConfig(k=10),
                   optim=loop.OptimConfig(warmup_epochs=0, base_learning_rate=0.06,
                                          base_batch_size=128))
    train = loop.TrainConfig(epochs=1, batch_size=256, verbose=0, log_steps=True)
    model_dir = str(tmp_path / "simclr")
    logs = pretrain.run_pretraining(model_dir, **configs, train=train, mesh=mesh)
    import json

    steps = [json.loads(line) for line in open(f"{model_dir}/steps.jsonl")]
    assert np.isfinite(logs["loss"]) and steps[-1]["loss"] < steps[0]["loss"]
    assert steps[0]["loss"] < np.log(511) + 0.5  # NT-Xent over 2B - 1 = 511 candidates
    state = loop.build_state(model_dir, **configs, train=train, mesh=mesh)
    w = state.classifier.class_weights
    assert not state.optimizer.has_slot(w)
    again = loop.TrainConfig(**{**train.__dict__, "epochs": 2})
    logs = pretrain.run_pretraining(model_dir, **configs, train=again, mesh=mesh)
    assert logs["step"] == 10 and np.isfinite(logs["loss"])

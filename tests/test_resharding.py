"""Issue 8: a checkpoint written on T devices restores onto another T / layout with
identical W rows, optimizer slots, hard-negative table, encoder and position."""

import shutil

import numpy as np
import pytest

from tf_instcls import parallel, pretrain
from tf_instcls.parallel import layouts
from tf_instcls.training import loop

N = 45  # not a multiple of 2, 4 or 8: the padded shapes differ between meshes


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.integers(0, 256, (N, 16, 16, 3)).astype(np.uint8))
    configs = dict(
        data=loop.DataConfig(dataset=f"npz:{root / 'data.npz'}", image_size=16),
        model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=8),
        optim=loop.OptimConfig(warmup_epochs=0),
        train=loop.TrainConfig(epochs=1, batch_size=24, verbose=0),
        method=loop.FullConfig(num_hard_negatives=4),
        monitor=loop.MonitorConfig(every_epochs=0),
    )
    model_dir = root / "t4"
    pretrain.run_pretraining(str(model_dir), **configs, mesh=parallel.build_mesh(4))
    return root, model_dir, configs


def _snapshot(state):
    clf = state.classifier
    n = clf.num_instances
    return {
        "W": parallel.to_numpy(clf.class_weights)[:n],
        "W_slot": parallel.to_numpy(state.optimizer.slot_for(clf.class_weights))[:n],
        "table": parallel.to_numpy(state.hard_negatives.table)[:n],
        "table_epoch": parallel.to_numpy(state.hard_negatives.epoch),
        "step": state.step,
        "encoder": [parallel.to_numpy(layouts.variable_handle(v))
                    for v in state.encoder.variables],
        "slots": [parallel.to_numpy(s) for s in state.optimizer.slots
                  if s is not state.optimizer.slot_for(clf.class_weights)],
    }


def _load(model_dir, configs, mesh, layout="sharded"):
    return loop.build_state(str(model_dir), **{**configs, "classifier":
                            loop.ClassifierConfig(layout=layout)}, mesh=mesh)


@pytest.mark.slow
@pytest.mark.parametrize("devices, layout", [(2, "sharded"), (8, "sharded"), (1, "sharded"),
                                             (4, "replicated"), (3, "replicated")])
def test_restore_on_another_device_count_or_layout(written, tmp_path, devices, layout):
    root, model_dir, configs = written
    reference = _snapshot(_load(model_dir, configs, parallel.build_mesh(4)))
    assert reference["step"] == 1 and reference["table_epoch"] == 0
    assert np.abs(reference["W_slot"]).sum() > 0 and (reference["table"] >= 0).all()
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    state = _load(copy, configs, parallel.build_mesh(devices), layout)
    got = _snapshot(state)
    assert got["step"] == reference["step"] and got["table_epoch"] == reference["table_epoch"]
    for key in ("W", "W_slot", "table"):
        np.testing.assert_array_equal(got[key], reference[key], err_msg=key)
    for a, b in zip(got["encoder"] + got["slots"], reference["encoder"] + reference["slots"]):
        np.testing.assert_array_equal(a, b)
    padded = parallel.to_numpy(state.classifier.class_weights)
    assert padded.shape[0] == state.classifier.num_padded
    assert not padded[N:].any()  # new padding rows are zero
    # and training goes on from there on the new mesh
    train = loop.TrainConfig(**{**configs["train"].__dict__, "epochs": 2})
    logs = pretrain.run_pretraining(str(copy), **{**configs, "train": train, "classifier":
                                    loop.ClassifierConfig(layout=layout)},
                                    mesh=parallel.build_mesh(devices))
    assert logs["step"] == 2 and np.isfinite(logs["loss"])

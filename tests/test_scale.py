"""Issue 15's run controls: TrainConfig.max_steps stops inside an epoch with a checkpoint
and the rerun continues the same run exactly; stages.jsonl records every stage with its
time and memory; an epoch reports mining's share of its time."""

import json

import numpy as np
import pytest

from tf_instcls import parallel, pretrain
from tf_instcls.training import loop, stages

CONFIGS = dict(
    data=loop.DataConfig(dataset="synthetic:600:16", image_size=16),  # no labels
    model=loop.ModelConfig(backbone="convnet_small", backbone_width=4, head_hidden_dim=16,
                           embedding_dim=16),
    optim=loop.OptimConfig(warmup_epochs=0),
    method=loop.FullConfig(num_hard_negatives=8),
    monitor=loop.MonitorConfig(every_epochs=0),
)
# 600 images at batch 128: 4 steps an epoch, 3 epochs = 12 steps
TRAIN = loop.TrainConfig(epochs=3, batch_size=128, verbose=0, log_steps=True,
                         deterministic=True)


def _losses(model_dir):
    with open(f"{model_dir}/steps.jsonl") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if r}


def _with(config, **changes):
    return type(config)(**{**config.__dict__, **changes})


@pytest.mark.slow
def test_max_steps_stops_inside_an_epoch_and_the_rerun_continues_exactly(tmp_path, capsys):
    mesh = parallel.build_mesh(2)
    straight = str(tmp_path / "straight")
    pretrain.run_pretraining(straight, **CONFIGS, train=TRAIN, mesh=mesh)

    stepped = str(tmp_path / "stepped")
    logs = pretrain.run_pretraining(stepped, **CONFIGS, train=_with(TRAIN, max_steps=6), mesh=mesh)
    assert logs["stopped_at_step"] == 6  # inside epoch 1 (steps 5-8)
    assert "stopped at step 6 of 12" in capsys.readouterr().out
    state = loop.build_state(stepped, **CONFIGS, train=TRAIN, mesh=mesh)
    assert state.step == 6 and state.manager.latest_checkpoint.endswith("ckpt-6")
    # at its max_steps already: nothing runs, nothing is written
    before = open(f"{stepped}/steps.jsonl").read()
    logs = pretrain.run_pretraining(stepped, **CONFIGS, train=_with(TRAIN, max_steps=6), mesh=mesh)
    assert logs == {"stopped_at_step": 6} and "at its max_steps 6" in capsys.readouterr().out
    assert open(f"{stepped}/steps.jsonl").read() == before
    # to an epoch end, then (max_steps 0) to the end of the run
    pretrain.run_pretraining(stepped, **CONFIGS, train=_with(TRAIN, max_steps=8), mesh=mesh)
    pretrain.run_pretraining(stepped, **CONFIGS, train=TRAIN, mesh=mesh)

    a, b = _losses(straight), _losses(stepped)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    np.testing.assert_array_equal([a[k] for k in sorted(a)], [b[k] for k in sorted(b)])
    epochs = [json.loads(line) for line in open(f"{stepped}/metrics.jsonl")]
    # epoch 1 was finished by the second run: one record per epoch, none for the stop
    assert [r["epoch"] for r in epochs if "epoch" in r] == [0, 1, 2]


@pytest.mark.slow
def test_stages_record_time_memory_and_bytes_of_every_stage(tmp_path):
    mesh = parallel.build_mesh(2)
    model_dir = str(tmp_path / "run")
    train = _with(TRAIN, epochs=2, max_steps=6)
    # labelled (id % 4): 512 to train (4 steps an epoch), 128 held out for the kNN monitor
    data = _with(CONFIGS["data"], dataset="synthetic:640:16:4", holdout_fraction=0.2)
    configs = {**CONFIGS, "data": data, "monitor": loop.MonitorConfig(every_epochs=1)}
    pretrain.run_pretraining(model_dir, **configs, train=train, mesh=mesh)
    pretrain.run_pretraining(model_dir, **configs, train=_with(train, max_steps=0), mesh=mesh)
    records = stages.read(model_dir)
    names = [r["stage"] for r in records]
    # first process: startup, the prior, kNN at init, mining, steps, checkpoints, a stop
    assert names[:3] == ["startup", "prior", "knn"]
    assert names.count("startup") == 2 and names.count("restore") == 1
    assert names.count("mining") == 2  # once per epoch: not again on the resume mid-epoch
    restore = next(r for r in records if r["stage"] == "restore")
    assert restore["step"] == 6 and restore["bytes"] > 0
    saves = [r for r in records if r["stage"] == "checkpoint"]
    assert [r["step"] for r in saves] == [4, 6, 8]  # epoch 0, the stop, epoch 1
    # W [N, D] float32 and its momentum are in every checkpoint
    assert all(r["bytes"] > 2 * 512 * 16 * 4 for r in saves)
    steps = [r for r in records if r["stage"] == "steps"]
    # each process leaves its first (tracing) step out: 3 + 1 + 2 timed steps of 8
    assert sum(r["count"] for r in steps) == 6 and all(r["median_s"] > 0 for r in steps)
    for r in records:
        assert r["seconds"] >= 0 and 0 < r["rss_gib"] <= r["peak_rss_gib"]
    epochs = [json.loads(line) for line in open(f"{model_dir}/metrics.jsonl")]
    # epoch 0 mined and trained in one process; epoch 1 was mined before the stop, and
    # the resumed process that finished it did not mine (its share is in stages.jsonl)
    shares = {r["epoch"]: r["mining_share"] for r in epochs if "mining_share" in r}
    assert list(shares) == [0] and 0 < shares[0] < 1


@pytest.mark.slow
def test_progressive_resizing_switches_at_its_epoch_and_resumes_exactly(tmp_path):
    """DataConfig.train_size_schedule ((0, 8), (2, 12)): epochs 0-1 are exactly a run of
    8 px views, epoch 2 differs from it; a run stopped inside epoch 1 and again inside
    epoch 2 (the second stage) continues exactly."""
    mesh = parallel.build_mesh(2)
    schedule = _with(CONFIGS["data"], train_size_schedule=((0, 8), (2, 12)))
    fixed = _with(CONFIGS["data"], train_image_size=8)
    straight, stepped, at8 = (str(tmp_path / name) for name in ("straight", "stepped", "at8"))
    pretrain.run_pretraining(straight, **{**CONFIGS, "data": schedule}, train=TRAIN, mesh=mesh)
    pretrain.run_pretraining(at8, **{**CONFIGS, "data": fixed}, train=TRAIN, mesh=mesh)
    for max_steps in (6, 10, 0):
        pretrain.run_pretraining(stepped, **{**CONFIGS, "data": schedule},
                                 train=_with(TRAIN, max_steps=max_steps), mesh=mesh)
    a, b, c = _losses(straight), _losses(stepped), _losses(at8)
    assert sorted(a) == sorted(b) == sorted(c) == list(range(1, 13))
    np.testing.assert_array_equal([a[k] for k in sorted(a)], [b[k] for k in sorted(b)])
    np.testing.assert_array_equal([a[k] for k in range(1, 9)], [c[k] for k in range(1, 9)])
    assert all(a[k] != c[k] for k in range(9, 13))  # 12 px views from epoch 2 on
    with open(f"{stepped}/run_info.json") as f:
        info = json.load(f)
    assert info["train_size_schedule"] == [[0, 8], [2, 12]] and info["train_image_size"] == 12
    # a resume with another schedule is refused before any step
    other = _with(CONFIGS["data"], train_size_schedule=((0, 8), (1, 12)))
    with pytest.raises(ValueError, match="train_size_schedule"):
        pretrain.run_pretraining(stepped, **{**CONFIGS, "data": other}, train=TRAIN, mesh=mesh)

"""Issue 8: non-finite guard, damaged / interrupted / unwritable checkpoints, config
validation. Every scenario checks that the checkpoints already written stay usable."""

import glob
import os
import re
import resource
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_instcls import parallel, pretrain
from tf_instcls.parallel import layouts
from tf_instcls.training import checkpoints, loop
from tf_instcls.training.step import make_train_step

from helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(__file__))
TINY = dict(
    data=loop.DataConfig(image_size=16),
    model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=16),
    optim=loop.OptimConfig(warmup_epochs=0),
    method=loop.FullConfig(num_hard_negatives=8),
    monitor=loop.MonitorConfig(every_epochs=0),
)
TRAIN = loop.TrainConfig(epochs=1, batch_size=256, verbose=0, checkpoint_every_steps=1)
SKIP = loop.FaultConfig(nonfinite="skip")
CLI_TINY = ["--gin_bindings=DataConfig.image_size = 16",
            "--gin_bindings=ModelConfig.backbone_width = 8",
            "--gin_bindings=ModelConfig.head_hidden_dim = 32",
            "--gin_bindings=MonitorConfig.every_epochs = 0",
            "--gin_bindings=TrainConfig.checkpoint_every_steps = 1",
            "--batch_size=64"]



def _train_cmd(model_dir, *extra):
    return [sys.executable, os.path.join(ROOT, "tools", "train.py"), f"--model_dir={model_dir}",
            *CLI_TINY, *extra]


def _values(state):
    handles = [layouts.variable_handle(v) for v in state.encoder.variables]
    handles += [state.classifier.class_weights, *state.optimizer.slots]
    return [parallel.to_numpy(h) for h in handles]


def test_nonfinite_step_leaves_every_variable_untouched():
    mesh = parallel.build_mesh(2)
    import tempfile

    state = loop.build_state(tempfile.mkdtemp(), **TINY, train=TRAIN, mesh=mesh)
    step = make_train_step(state.encoder, state.classifier, state.optimizer, lambda s: 0.1,
                           state.method)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 2, 16, 16, 3)).astype(np.float32)
    ids = np.arange(8, dtype=np.int32)

    def run(x):
        return step(layouts.pack_sharded(x, layouts.batch_layout(mesh, 5)),
                    layouts.pack_sharded(ids, layouts.batch_layout(mesh, 1)),
                    state.global_step)

    before = _values(state)
    bad = images.copy()
    bad[3, 0, 5, 5, 1] = np.nan
    out = run(bad)
    assert not bool(parallel.to_numpy(out["finite"]))
    for a, b in zip(_values(state), before):  # BN statistics, W, slots, weights
        np.testing.assert_array_equal(a, b)
    assert state.step == 1  # the batch is consumed
    out = run(images)
    assert bool(parallel.to_numpy(out["finite"]))
    changed = [not np.array_equal(a, b) for a, b in zip(_values(state), before)]
    assert sum(changed) > len(changed) // 2


class InjectNaN(keras.callbacks.Callback):
    """Puts NaN into a backbone weight before batch ``at`` (and, with ``heal``, puts
    the weight back before the next batch)."""

    def __init__(self, at, heal=False):
        super().__init__()
        self.at, self.heal, self.state, self.saved = at, heal, None, None

    def _handle(self):
        return layouts.variable_handle(self.model.trainable_variables[0])

    def on_train_batch_begin(self, batch, logs=None):
        handle = self._handle()
        if batch == self.at:
            self.saved = parallel.to_numpy(handle)
            handle.assign(layouts.pack_sharded(np.full_like(self.saved, np.nan), handle.layout))
        elif self.heal and batch == self.at + 1:
            handle.assign(layouts.pack_sharded(self.saved, handle.layout))


@pytest.mark.slow
def test_nonfinite_loss_stops_before_anything_is_written(tmp_path):
    mesh = parallel.build_mesh(2)
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step 3 "
                                                 r"\(epoch 0, batch 2\).*ckpt-2"):
        pretrain.run_pretraining(str(tmp_path), **TINY, train=TRAIN, mesh=mesh,
                             callbacks=[InjectNaN(at=2)])
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert latest.endswith("ckpt-2")
    w = tf.train.load_checkpoint(latest).get_tensor(checkpoints.W_KEY)
    assert np.isfinite(w).all()


@pytest.mark.slow
def test_nonfinite_skip_mode_skips_the_step_and_goes_on(tmp_path):
    mesh = parallel.build_mesh(2)
    logs = pretrain.run_pretraining(str(tmp_path), **TINY, train=TRAIN, mesh=mesh,
                                    callbacks=[InjectNaN(at=2, heal=True)], fault=SKIP)
    assert logs["step"] == 5 and np.isfinite(logs["loss"])
    w = tf.train.load_checkpoint(str(tmp_path / "checkpoints" / "ckpt-5")).get_tensor(
        checkpoints.W_KEY)
    assert np.isfinite(w).all()


class PoisonEpoch(InjectNaN):
    """NaN in a backbone weight for every batch of epoch ``epoch``, healed after it."""

    def __init__(self, epoch):
        super().__init__(at=None)
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            handle = self._handle()
            self.saved = parallel.to_numpy(handle)
            handle.assign(layouts.pack_sharded(np.full_like(self.saved, np.nan), handle.layout))

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            handle = self._handle()
            handle.assign(layouts.pack_sharded(self.saved, handle.layout))


@pytest.mark.slow
def test_an_epoch_whose_every_step_was_skipped_records_no_loss_and_says_so(tmp_path, caplog):
    from tf_instcls.eval.analysis import read_metrics

    mesh = parallel.build_mesh(2)
    train = loop.TrainConfig(**{**TRAIN.__dict__, "epochs": 3})
    logs = pretrain.run_pretraining(str(tmp_path), **TINY, train=train, mesh=mesh,
                                    callbacks=[PoisonEpoch(1)],
                                    fault=loop.FaultConfig(nonfinite="skip",
                                                           max_consecutive_skips=20))
    records = {r["epoch"]: r for r in read_metrics(str(tmp_path))}
    assert np.isfinite(records[0]["loss"]) and "skipped_steps" not in records[0]
    assert "loss" not in records[1] and "instance_acc" not in records[1]  # not 0.0
    assert records[1]["skipped_steps"] == 5
    assert np.isfinite(records[2]["loss"]) and logs["step"] == 15
    assert any("epoch 2: every step was skipped" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    mesh = parallel.build_mesh(2)
    pretrain.run_pretraining(str(tmp_path), **TINY, train=TRAIN, mesh=mesh)
    ckpt_dir = tmp_path / "checkpoints"
    data = sorted(glob.glob(str(ckpt_dir / "ckpt-5.data-*")), key=os.path.getsize)[-1]
    with open(data, "r+b") as f:  # truncate the largest shard (W's)
        f.truncate(os.path.getsize(data) // 2)
    state = loop.build_state(str(tmp_path), **TINY, train=TRAIN, mesh=mesh)
    assert state.step == 4
    assert any("ckpt-5 is damaged" in r.getMessage() for r in caplog.records)
    assert glob.glob(str(ckpt_dir / "corrupt" / "ckpt-5.*"))
    assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith("ckpt-4")
    # the run goes on and writes step 5 again
    logs = pretrain.run_pretraining(str(tmp_path), **TINY, train=TRAIN, mesh=mesh)
    assert logs["step"] == 5
    checkpoints.verify(str(ckpt_dir / "ckpt-5"))


class _Crash(Exception):
    pass


class _CrashAtStep(keras.callbacks.Callback):
    """A process dying inside a step: raises once the global step reaches ``step``."""

    def __init__(self, step):
        super().__init__()
        self.at, self.seen = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise _Crash(f"crash at step {self.at}")


def _checkpoint_steps(model_dir):
    return sorted(int(re.search(r"ckpt-(\d+)\.index$", p).group(1))
                  for p in glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index")))


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])  # 1: BN through the fused kernel
def test_checkpoints_every_k_epochs_and_a_crash_between_them_resumes_exactly(tmp_path,
                                                                             devices):
    """TrainConfig.checkpoint_every_epochs = 2 over 4 epochs of 5 steps saves at steps 10
    and 20 only. A run that dies in epoch 3, after epoch 2 finished unsaved, resumes from
    step 10, re-runs epochs 2 and 3, and ends with every variable (encoder, W, optimizer
    slots) equal to the uninterrupted run's; the re-run epochs' metrics lines equal
    the uninterrupted run's (the later line of an epoch is the one that counts)."""
    import json

    mesh = parallel.build_mesh(devices)
    train = loop.TrainConfig(**{**TRAIN.__dict__, "epochs": 4, "checkpoint_every_steps": 0,
                                "checkpoint_every_epochs": 2, "keep_checkpoints": 5})
    straight, crashed = str(tmp_path / "straight"), str(tmp_path / "crashed")
    pretrain.run_pretraining(straight, **TINY, train=train, mesh=mesh)
    assert _checkpoint_steps(straight) == [10, 20]
    with pytest.raises(_Crash):
        pretrain.run_pretraining(crashed, **TINY, train=train, mesh=mesh,
                                 callbacks=[_CrashAtStep(18)])
    assert _checkpoint_steps(crashed) == [10]
    pretrain.run_pretraining(crashed, **TINY, train=train, mesh=mesh)
    assert _checkpoint_steps(crashed) == [10, 20]

    def metrics(model_dir):
        with open(os.path.join(model_dir, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f]

    records = metrics(crashed)
    assert [r["epoch"] for r in records] == [0, 1, 2, 2, 3]  # epoch 2 ran twice
    last = {r["epoch"]: r["loss"] for r in records}
    assert [last[e] for e in range(4)] == [r["loss"] for r in metrics(straight)]
    a = _values(loop.build_state(straight, **TINY, train=train, mesh=mesh))
    b = _values(loop.build_state(crashed, **TINY, train=train, mesh=mesh))
    assert len(a) == len(b) > 10
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_bad_config_values_fail_before_any_work(tmp_path):
    bad = dict(TINY, classifier=loop.ClassifierConfig(layout="rows"),
               method=loop.FullConfig(temperature=0))
    with pytest.raises(ValueError, match="ClassifierConfig.layout.*temperature must be > 0"):
        loop.build_state(str(tmp_path / "x"), **bad, train=TRAIN, mesh=parallel.build_mesh(1))
    assert not os.path.exists(tmp_path / "x")
    with pytest.raises(ValueError, match="FaultConfig.nonfinite must be"):
        loop.validate_configs(TINY["data"], TINY["model"], TINY["optim"],
                              fault=loop.FaultConfig(nonfinite="ignore"))
    with pytest.raises(ValueError, match="checkpoint_every_epochs must be >= 1"):
        loop.validate_configs(TINY["data"], TINY["model"], TINY["optim"],
                              loop.TrainConfig(checkpoint_every_epochs=0))


@pytest.mark.slow
def test_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
    ok = subprocess.run(_train_cmd(tmp_path, "--epochs=1"), env=subprocess_env(),
                        capture_output=True,
                        text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))

    def limit_file_size():  # writes beyond 200 kB fail with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    full = subprocess.run(_train_cmd(tmp_path, "--epochs=2"), env=subprocess_env(),
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=limit_file_size)
    assert full.returncode != 0
    assert "could not write checkpoint" in full.stderr and "disk full" in full.stderr
    assert f"previous checkpoint {latest} is intact" in full.stderr
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == latest
    checkpoints.verify(latest)
    assert not glob.glob(str(tmp_path / "checkpoints" / "*_temp*"))


def _checkpoint_numbers(ckpt_dir, pattern):
    """The k of every ckpt-k whose files match ``pattern`` in ``ckpt_dir``."""
    names = (os.path.basename(p) for p in glob.glob(os.path.join(ckpt_dir, pattern)))
    return {int(m.group(1)) for n in names if (m := re.match(r"ckpt-(\d+)", n))}


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path):
    proc = subprocess.Popen(_train_cmd(tmp_path, "--epochs=3"), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = str(tmp_path / "checkpoints")
    killed_during_write = False
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            # ckpt-k being written while an earlier ckpt-j (j < k) is complete. Not "any
            # .index": TF merges ckpt-k's index into its final path before it removes
            # ckpt-k_temp, so ckpt-k's own half-written index matched too (CI, under
            # load: the only checkpoint was the one killed mid-write).
            writing = _checkpoint_numbers(ckpt_dir, "ckpt-*_temp*")
            complete = _checkpoint_numbers(ckpt_dir, "ckpt-*.index") - writing
            if writing and complete and min(complete) < max(writing):
                proc.send_signal(signal.SIGKILL)
                killed_during_write = True
                break
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait()
    assert killed_during_write, "the run ended before a checkpoint write could be caught"
    latest = checkpoints.newest_valid(ckpt_dir)
    assert latest is not None
    checkpoints.verify(latest)
    resumed = subprocess.run(_train_cmd(tmp_path, "--epochs=3"), env=subprocess_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout


@pytest.mark.slow
def test_soak_tool_random_kills_end_in_the_uninterrupted_state(tmp_path):
    import json

    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "soak.py"), f"--work_dir={tmp_path}",
         "--budget_s=25", "--kill_min_s=0.5", "--kill_max_s=3",
         *[f"--gin_bindings={b}" for b in (
             "DataConfig.image_size = 16", "ModelConfig.backbone_width = 8",
             "ModelConfig.head_hidden_dim = 32", "TrainConfig.epochs = 2",
             "TrainConfig.batch_size = 64", "MonitorConfig.every_epochs = 0")]],
        env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.load(open(tmp_path / "soak.json"))
    assert report["equal"] and len(report["kills"]) >= 1
    assert report["steps"] == 2 * (1528 // 64)


@pytest.mark.slow
def test_resume_from_a_relative_model_dir_keeps_its_checkpoints(tmp_path, monkeypatch):
    """Regression: checkpoint paths from the state file already include the directory;
    joining it again made every checkpoint of a relative --model_dir look missing, so
    a resume set them all aside and started over."""
    monkeypatch.chdir(tmp_path)
    mesh = parallel.build_mesh(2)
    train = loop.TrainConfig(**{**TRAIN.__dict__, "checkpoint_every_steps": 0})
    pretrain.run_pretraining("run", **TINY, train=train, mesh=mesh)
    assert checkpoints.newest_valid(os.path.join("run", "checkpoints")).endswith("ckpt-5")
    state = loop.build_state("run", **TINY, train=train, mesh=mesh)
    assert state.step == 5
    assert not os.path.exists(os.path.join("run", "checkpoints", "corrupt"))


@pytest.mark.slow
def test_many_checkpoints_log_no_retracing_warning_and_mining_traces_once(tmp_path, caplog):
    """A healthy run's console: no retracing warnings from saving a checkpoint every
    step, nor from mining every epoch."""
    import logging

    caplog.set_level(logging.WARNING)
    train = loop.TrainConfig(**{**TRAIN.__dict__, "epochs": 3})  # 15 saves, 3 minings
    pretrain.run_pretraining(str(tmp_path), **TINY, train=train, mesh=parallel.build_mesh(2))
    retracing = [r.getMessage()[:160] for r in caplog.records if "retracing" in r.getMessage()]
    assert retracing == []


@pytest.mark.slow
def test_every_step_is_logged_before_its_checkpoint_is_written(tmp_path, monkeypatch):
    """A kill between a checkpoint and its step's log line would lose that line for
    good (the resume starts after it): the line must come first."""
    import json

    real_save = checkpoints.save
    missing = []

    def save(manager, step):
        with open(tmp_path / "steps.jsonl") as f:
            logged = {json.loads(line)["step"] for line in f if line.strip()}
        if step not in logged:
            missing.append(step)
        return real_save(manager, step)

    monkeypatch.setattr(checkpoints, "save", save)
    train = loop.TrainConfig(**{**TRAIN.__dict__, "log_steps": True})
    pretrain.run_pretraining(str(tmp_path), **TINY, train=train, mesh=parallel.build_mesh(2))
    assert missing == []

"""SIGTERM / SIGINT stop a run cleanly (parallel/preemption.py) and resume exactly; one run
holds a model_dir (training/run_lock.py).

The in-process runs send the signal to this process at a chosen point (a step, mining,
the prior, the kNN monitor's pass, a checkpoint save) through the real signal handler;
the resumed run must then end with the per-step losses and final state of a run that
was never interrupted. Child-process tests cover the binary's exit code, the grace
period, two processes and the lock against other processes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_instcls import parallel, pretrain
from tf_instcls.parallel import preemption
from tf_instcls.training import loop
from tf_instcls.training.run_lock import RunLock, RunLockedError

from helpers import ROOT, subprocess_env

STEPS_PER_EPOCH = 5  # 1,528 digits training images, batch 256
EPOCHS = 3
METHODS = {
    "full": dict(method=loop.FullConfig(num_hard_negatives=8),
                 model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16,
                                        embedding_dim=16)),
    "npid_nce": dict(method=loop.NPIDConfig(noise=64),
                     model=loop.ModelConfig(backbone_width=4, embedding_dim=16,
                                            use_head=False),
                     classifier=loop.ClassifierConfig(init_mode="gaussian")),
    "simclr": dict(method=loop.SimCLRConfig(),
                   model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16,
                                          embedding_dim=16),
                   classifier=loop.ClassifierConfig(init_mode="gaussian")),
}


def _configs(method: str) -> dict:
    return dict(data=loop.DataConfig(image_size=16),
                optim=loop.OptimConfig(warmup_epochs=0),
                monitor=loop.MonitorConfig(k=10, every_epochs=1),
                train=loop.TrainConfig(epochs=EPOCHS, batch_size=256, verbose=0,
                                       deterministic=True, log_steps=True),
                **METHODS[method])


def _losses(model_dir) -> dict:
    """{step: loss} of steps.jsonl (a replayed step's later line counts)."""
    with open(os.path.join(model_dir, "steps.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if r.get("step")}


def _final_state(model_dir) -> dict:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(f"{model_dir}/checkpoints"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if "OBJECT_GRAPH" not in key and "save_counter" not in key}


def _latest_step(model_dir):
    latest = tf.train.latest_checkpoint(f"{model_dir}/checkpoints")
    return None if latest is None else int(latest.rsplit("-", 1)[1])


def _signal_after_steps(count, signum=signal.SIGTERM):
    """A user callback: ``signum`` to this process after the run's ``count``-th step."""
    import keras

    class SignalAfter(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps == count:
                os.kill(os.getpid(), signum)

    return SignalAfter()


def _signal_then(function, *, on_call=1):
    """``function`` wrapped: on its ``on_call``-th call, SIGTERM to this process first."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == on_call:
            os.kill(os.getpid(), signal.SIGTERM)
        return function(*args, **kwargs)

    return wrapped


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Each method's uninterrupted run: (per-step losses, final checkpoint tensors)."""
    out = {}
    for method in METHODS:
        model_dir = str(tmp_path_factory.mktemp(f"ref_{method}"))
        logs = pretrain.run_pretraining(model_dir, **_configs(method),
                                        mesh=parallel.build_mesh(2))
        assert "stopped_by" not in logs and logs["step"] == EPOCHS * STEPS_PER_EPOCH
        out[method] = (_losses(model_dir), _final_state(model_dir))
    return out


def _interrupt_and_resume(model_dir, method, *, callbacks=(), expect_step, stopped=None):
    """The run stopped by the signal, then resumed to its end (``stopped()`` checks what
    the stopped run left, before the resume)."""
    mesh = parallel.build_mesh(2)
    logs = pretrain.run_pretraining(model_dir, **_configs(method), mesh=mesh,
                                    callbacks=callbacks)
    assert logs["stopped_by"] == "SIGTERM" and logs["exit_code"] == 143, logs
    assert logs["stopped_at_step"] == expect_step
    # the step it stopped after is the latest checkpoint (none before any training)
    assert _latest_step(model_dir) == (expect_step or None)
    assert preemption.requested() is not None  # the request was this run's
    if stopped is not None:
        stopped()
    logs = pretrain.run_pretraining(model_dir, **_configs(method), mesh=mesh)
    assert "stopped_by" not in logs and logs["step"] == EPOCHS * STEPS_PER_EPOCH
    return logs


def _assert_same_run(model_dir, reference):
    losses, state = reference
    assert _losses(model_dir) == losses  # every step, bit for bit
    got = _final_state(model_dir)
    assert got.keys() == state.keys()
    for key in state:
        np.testing.assert_array_equal(got[key], state[key], err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_sigterm_mid_epoch_saves_that_step_and_the_resume_is_exact(method, references,
                                                                   tmp_path):
    model_dir = str(tmp_path / "run")
    # after step 7 (epoch 1's third): no scheduled checkpoint there
    _interrupt_and_resume(model_dir, method, callbacks=[_signal_after_steps(7)],
                          expect_step=7)
    _assert_same_run(model_dir, references[method])


@pytest.mark.slow
def test_sigterm_during_mining_gives_up_mining_and_resumes_exactly(references, tmp_path,
                                                                    monkeypatch):
    from tf_instcls.callbacks import hard_negative_miner
    from tf_instcls.mining import hardest
    from tf_instcls.training import stages

    # mining's second pass (epoch 1), in blocks of 256 rows: the signal comes before it,
    # and mining gives up after its first block instead of finishing
    monkeypatch.setattr(hard_negative_miner, "hardest_negatives", _signal_then(
        lambda *a, **k: hardest.hardest_negatives(*a, **{**k, "block_size": 256}),
        on_call=2))
    model_dir = str(tmp_path / "run")

    def one_mining_pass_finished():
        assert [r["epoch"] for r in stages.read(model_dir) if r["stage"] == "mining"] == [0]

    _interrupt_and_resume(model_dir, "full", expect_step=STEPS_PER_EPOCH,
                          stopped=one_mining_pass_finished)
    _assert_same_run(model_dir, references["full"])


@pytest.mark.slow
def test_sigterm_during_the_prior_saves_nothing_and_the_rerun_is_exact(references,
                                                                        tmp_path, monkeypatch):
    from tf_instcls.callbacks import contrastive_prior

    monkeypatch.setattr(contrastive_prior, "prior_embeddings",
                        _signal_then(contrastive_prior.prior_embeddings))
    model_dir = str(tmp_path / "run")
    _interrupt_and_resume(model_dir, "full", expect_step=0)
    _assert_same_run(model_dir, references["full"])


@pytest.mark.slow
def test_sigterm_during_a_save_or_the_knn_monitor_stops_at_that_epoch_end(
        references, tmp_path, monkeypatch):
    from tf_instcls.callbacks import checkpoint, knn_monitor

    # the first epoch's save: it completes, then the run stops before epoch 1
    monkeypatch.setattr(checkpoint.checkpoints, "save",
                        _signal_then(checkpoint.checkpoints.save))
    model_dir = str(tmp_path / "save")
    _interrupt_and_resume(model_dir, "full", expect_step=STEPS_PER_EPOCH)
    _assert_same_run(model_dir, references["full"])
    monkeypatch.undo()
    # epoch 1's kNN evaluation (the monitor's third, after initialisation and epoch 0)
    monkeypatch.setattr(knn_monitor.KNNMonitor, "evaluate",
                        _signal_then(knn_monitor.KNNMonitor.evaluate, on_call=3))
    model_dir = str(tmp_path / "knn")
    _interrupt_and_resume(model_dir, "full", expect_step=2 * STEPS_PER_EPOCH)
    _assert_same_run(model_dir, references["full"])
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        epochs = {r["epoch"]: r for r in map(json.loads, f)}
    assert sorted(epochs) == [0, 1, 2] and "knn_top1" not in epochs[1]  # its pass stopped


def test_a_run_refuses_a_model_dir_held_by_a_live_run_and_names_the_holder(tmp_path):
    holder = RunLock(str(tmp_path / "run"))
    holder.acquire()
    try:
        record = json.load(open(holder.path))
        assert record["pid"] == os.getpid() and record["host"] and record["started"]
        with pytest.raises(RunLockedError, match=rf"is in use by another training run "
                                                 rf"\(host .*, pid {os.getpid()}, started "):
            RunLock(str(tmp_path / "run")).acquire()
        configs = _configs("full")
        with pytest.raises(RunLockedError, match="in use"):  # the loop takes the lock
            pretrain.run_pretraining(str(tmp_path / "run"), **configs,
                                     mesh=parallel.build_mesh(1))
    finally:
        holder.release()
    assert open(holder.path).read() == ""  # released: empty, and free again
    again = RunLock(str(tmp_path / "run"))
    again.acquire()
    again.release()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, monkeypatch):
    from tf_instcls.training import run_lock

    (tmp_path / "run").mkdir()
    dead = {"host": "gone-host", "pid": 999999, "started": "2026-01-01T00:00:00+00:00"}
    (tmp_path / "run" / "run.lock").write_text(json.dumps(dead))  # written, not locked
    warnings = []
    monkeypatch.setattr(run_lock.logging, "warning",
                        lambda message, *args: warnings.append(message % args))
    lock = RunLock(str(tmp_path / "run"))
    lock.acquire()
    lock.release()
    assert len(warnings) == 1 and "gone-host" in warnings[0] and "999999" in warnings[0]


def test_a_refused_run_leaves_no_lock_behind(tmp_path):
    configs = _configs("full")
    configs["train"] = loop.TrainConfig(epochs=1, batch_size=4096, verbose=0)  # > N
    with pytest.raises(ValueError, match="batch size 4096 is larger than the dataset"):
        pretrain.run_pretraining(str(tmp_path / "new"), **configs,
                                 mesh=parallel.build_mesh(1))
    assert not (tmp_path / "new").exists()


def test_grace_period_is_validated_and_signals_are_restored_after_a_run(tmp_path):
    with pytest.raises(ValueError, match="FaultConfig.grace_period_s must be > 0"):
        loop.validate_configs(fault=loop.FaultConfig(grace_period_s=0))
    before = signal.getsignal(signal.SIGTERM)
    with preemption.handle_signals(5.0):
        assert signal.getsignal(signal.SIGTERM) is not before
        assert not preemption.should_stop()
    assert signal.getsignal(signal.SIGTERM) is before
    assert not preemption.should_stop()  # outside a run: never


# -- child processes: the binary, the grace period, two processes, the lock -----------
CLI_TINY = ["--gin_bindings=DataConfig.image_size = 16",
            "--gin_bindings=ModelConfig.backbone_width = 4",
            "--gin_bindings=ModelConfig.head_hidden_dim = 16",
            "--gin_bindings=FullConfig.num_hard_negatives = 8",
            "--gin_bindings=MonitorConfig.every_epochs = 0",
            "--gin_bindings=TrainConfig.log_steps = True",
            "--batch_size=64"]


class _Spawned(subprocess.Popen):
    """A child process whose output goes to files, so a long run never blocks on a full
    pipe (a blocked write would hold off the signal handling until the grace period);
    ``communicate()`` returns the files' text."""

    def __init__(self, cmd, env=None):
        import tempfile

        self._files = [tempfile.TemporaryFile("w+") for _ in range(2)]
        super().__init__(cmd, env=env or subprocess_env(), stdout=self._files[0],
                         stderr=self._files[1], text=True, cwd=ROOT)

    def communicate(self, input=None, timeout=None):
        self.wait(timeout)
        texts = []
        for f in self._files:
            f.seek(0)
            texts.append(f.read())
        return tuple(texts)


def _train(model_dir, *extra, env=None):
    return _Spawned([sys.executable, os.path.join(ROOT, "tools", "train.py"),
                     f"--model_dir={model_dir}", *CLI_TINY, *extra], env=env)


def _wait_for_step(model_dir, step, proc, timeout=300):
    path = os.path.join(model_dir, "steps.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if os.path.exists(path) and any(
                json.loads(line).get("step", 0) >= step for line in open(path) if line.strip()):
            return
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


@pytest.mark.slow
def test_the_binary_exits_143_after_saving_and_a_second_run_is_refused(tmp_path):
    model_dir = tmp_path / "run"
    first = _train(model_dir, "--epochs=50")
    _wait_for_step(model_dir, 25, first)  # past the first epoch's checkpoint (23 steps)
    second = _train(model_dir, "--epochs=50")
    out, err = second.communicate(timeout=300)
    assert second.returncode != 0
    assert "is in use by another training run (host " in err and f"pid {first.pid}" in err
    # a read-only tool works on the live run's latest checkpoint meanwhile
    export = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"),
                             f"--model_dir={model_dir}", f"--export_dir={tmp_path / 'exp'}"],
                            env=subprocess_env(), capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    assert export.returncode == 0, export.stderr[-3000:]
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 143, err[-3000:]
    stopped = [line for line in out.splitlines() if line.startswith("stopped by SIGTERM")]
    assert len(stopped) == 1 and "Run the same command again to resume" in stopped[0]
    step = int(stopped[0].split(" at step ")[1].split(";")[0])
    assert _latest_step(model_dir) == step
    assert open(model_dir / "run.lock").read() == ""  # released


@pytest.mark.slow
def test_a_save_that_outlasts_the_grace_period_leaves_the_previous_checkpoint(tmp_path):
    """The save after the signal sleeps past the grace period: the process exits at its
    end (143) and the checkpoint before stays the latest and verifies."""
    model_dir = tmp_path / "run"
    driver = tmp_path / "slow_save.py"
    driver.write_text(
        "import runpy, sys, time\n"
        "from tf_instcls.training import checkpoints\n"
        "from tf_instcls.parallel import preemption\n"
        "real = checkpoints.save\n"
        "def slow(*args, **kwargs):\n"
        "    if preemption.requested():\n"
        "        time.sleep(60)\n"
        "    return real(*args, **kwargs)\n"
        "checkpoints.save = slow\n"
        "sys.argv = ['train.py'] + sys.argv[1:]\n"
        f"runpy.run_path({os.path.join(ROOT, 'tools', 'train.py')!r}, run_name='__main__')\n")
    proc = _Spawned([sys.executable, str(driver), f"--model_dir={model_dir}", *CLI_TINY,
                     "--epochs=50", "--grace_period_s=3"])
    _wait_for_step(model_dir, 50, proc)  # past the first epoch's checkpoint (24 steps)
    before = _latest_step(model_dir)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and time.monotonic() - start < 30, err[-3000:]
    assert "grace period of 3 s after SIGTERM is over" in err
    assert _latest_step(model_dir) == before
    from tf_instcls.training import checkpoints

    assert checkpoints.newest_valid(str(model_dir / "checkpoints")).endswith(f"ckpt-{before}")


@pytest.mark.slow
def test_a_killed_run_leaves_a_stale_lock_that_the_next_run_takes_over(tmp_path):
    model_dir = tmp_path / "run"
    first = _train(model_dir, "--epochs=50")
    _wait_for_step(model_dir, 3, first)
    first.kill()  # SIGKILL: no handler, no release
    first.communicate()
    assert json.loads(open(model_dir / "run.lock").read())["pid"] == first.pid
    second = _train(model_dir, "--epochs=50", "--max_steps=30")
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert "taking over the lock of a run that ended without releasing it" in err
    assert f"pid {first.pid}" in err


def _multiclient_env(client_id, ports, virtual=2):
    return dict(subprocess_env(), DTENSOR_CLIENT_ID=str(client_id), DTENSOR_NUM_CLIENTS="2",
                DTENSOR_JOB_NAME="worker",
                DTENSOR_JOBS=",".join(f"localhost:{p}" for p in ports))


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("to", ["both", "one"])
def test_two_processes_agree_on_the_step_and_resume_exactly(tmp_path, to):
    """2 processes x 2 virtual CPUs: SIGTERM to both, or to process 1 only; both stop
    after the same step with its checkpoint, exit 143, and the rerun of both ends with
    the per-step losses of an uninterrupted 1-process x 4-device run."""
    from test_multiclient import _free_ports

    common = [*CLI_TINY, "--virtual_devices=2", "--epochs=3",
              "--gin_bindings=TrainConfig.deterministic = True"]
    reference = tmp_path / "reference"
    ref = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train.py"),
                          f"--model_dir={reference}", *CLI_TINY, "--virtual_devices=4",
                          "--epochs=3", "--gin_bindings=TrainConfig.deterministic = True"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=900,
                         cwd=ROOT)
    assert ref.returncode == 0, ref.stderr[-3000:]
    model_dir = tmp_path / "run"

    def launch():
        ports = _free_ports(2)
        return [_Spawned([sys.executable, os.path.join(ROOT, "tools", "train.py"),
                          "--multi_client", f"--model_dir={model_dir}", *common],
                         env=_multiclient_env(i, ports)) for i in range(2)]

    procs = launch()
    _wait_for_step(model_dir, 10, procs[0])
    for proc in procs if to == "both" else procs[1:]:
        proc.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [143, 143], [o[1][-2000:] for o in outs]
    steps = {int(o[0].split("stopped by SIGTERM at step ")[1].split(";")[0]) for o in outs}
    assert len(steps) == 1  # one agreed step
    assert _latest_step(model_dir) == steps.pop()
    procs = launch()
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert _losses(model_dir) == pytest.approx(_losses(reference), rel=1e-5)


@pytest.mark.slow
def test_a_signal_during_the_export_publishes_nothing(tmp_path):
    model_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train.py"),
                           f"--model_dir={model_dir}", *CLI_TINY, "--epochs=1"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    driver = tmp_path / "slow_export.py"
    driver.write_text(  # the export's files are being written when the signal comes
        "import os, runpy, sys, time\n"
        "from tf_instcls.export import saved_model\n"
        "real = saved_model._write\n"
        "def slow(tmp, *args, **kwargs):\n"
        "    real(tmp, *args, **kwargs)\n"
        "    open(os.path.join(tmp, 'writing'), 'w').close()\n"
        "    time.sleep(60)\n"
        "saved_model._write = slow\n"
        "sys.argv = ['export.py'] + sys.argv[1:]\n"
        f"runpy.run_path({os.path.join(ROOT, 'tools', 'export.py')!r}, run_name='__main__')\n")
    export_dir = tmp_path / "export"
    proc = _Spawned([sys.executable, str(driver), f"--model_dir={model_dir}",
                     f"--export_dir={export_dir}"])
    deadline = time.monotonic() + 300
    while not list(export_dir.glob(".tmp-*/writing")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "nothing was published" in err, err[-2000:]
    assert list(export_dir.iterdir()) == []  # no version, no temporary directory

"""Multi-process DTensor: 2 clients x 2 virtual CPUs on localhost, W sharded over all 4
(and a time budget's agreement over processes)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers import assert_close
from reference import cosine_softmax_loss

HERE = os.path.dirname(__file__)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_clients(script, out_dir, num_clients=2, timeout=300):
    """Starts ``num_clients`` DTensor clients of ``script``; returns their output paths."""
    jobs = ",".join(f"localhost:{p}" for p in _free_ports(num_clients))
    procs, outs = [], []
    for client in range(num_clients):
        out = os.path.join(out_dir, f"client{client}.npz")
        env = dict(os.environ, DTENSOR_CLIENT_ID=str(client), DTENSOR_NUM_CLIENTS=str(num_clients),
                   DTENSOR_JOB_NAME="worker", DTENSOR_JOBS=jobs, TF_CPP_MIN_LOG_LEVEL="2")
        env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
        procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, script), out], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs.append(out)
    try:
        results = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0 and "done" in stdout, stderr[-3000:]
    return outs


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_clients_match_the_single_process_reference(tmp_path):
    outs = run_clients("multiclient_worker.py", str(tmp_path))
    results = [dict(np.load(o)) for o in outs]
    first = results[0]
    ref = cosine_softmax_loss(
        first["x"], first["ids"], first["w"], hard_negatives=first["hard"], smoothing=0.2,
        valid_classes=13, upstream=first["upstream"],
    )
    assert first["w"].shape == (16, 6)
    for result in results:  # every client sees the same global values
        for key, want in zip(("loss", "grad_x", "grad_w"), ref):
            assert_close(result[key], want, name=key)
        # layouts.max_over_processes: clients 0 and 1 offered [c, 10 - c, 2.5]
        np.testing.assert_array_equal(result["agreed"], [1.0, 10.0, 2.5])


ROOT = os.path.dirname(HERE)
TRAIN_TINY = ["--gin_bindings=DataConfig.image_size = 16",
              "--gin_bindings=ModelConfig.backbone_width = 8",
              "--gin_bindings=ModelConfig.head_hidden_dim = 32",
              "--gin_bindings=TrainConfig.deterministic = True",
              "--gin_bindings=TrainConfig.log_steps = True",
              "--gin_bindings=MonitorConfig.k = 20",
              "--batch_size=64"]


def _start_train_clients(model_dir, extra=(), num_clients=2):
    """``tools/train.py`` once per process, DTensor multi-client on localhost."""
    jobs = ",".join(f"localhost:{p}" for p in _free_ports(num_clients))
    procs = []
    for client in range(num_clients):
        env = dict(os.environ, DTENSOR_CLIENT_ID=str(client),
                   DTENSOR_NUM_CLIENTS=str(num_clients), DTENSOR_JOB_NAME="worker",
                   DTENSOR_JOBS=jobs, TF_CPP_MIN_LOG_LEVEL="2")
        env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
        cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "--multi_client",
               "--virtual_devices=2", f"--model_dir={model_dir}", *TRAIN_TINY, *extra]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs, timeout=600):
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()


def _losses(model_dir):
    import json

    with open(os.path.join(model_dir, "steps.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if line.strip()]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_train_binary_on_two_processes_matches_one_process_on_four_devices(tmp_path):
    multi = tmp_path / "multi"
    outs = _finish(_start_train_clients(multi, ["--epochs=2"]))
    for stdout, stderr in outs:
        assert "kNN top-1" in stdout, stderr[-3000:]
    # one writer per file: one run_info.json, one TensorBoard event file, no temp files
    files = [os.path.relpath(os.path.join(d, f), multi) for d, _, fs in os.walk(multi)
             for f in fs]
    assert files.count("run_info.json") == 1
    assert len([f for f in files if f.startswith("tb" + os.sep)]) == 1, files
    assert not [f for f in files if f.endswith(".tmp") or ".tmp" + os.sep in f], files
    single = tmp_path / "single"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train.py"),
                           "--virtual_devices=4", f"--model_dir={single}", *TRAIN_TINY,
                           "--epochs=2"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _losses(multi), _losses(single)
    assert len(a) == len(b) == 2 * (1528 // 64)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert outs[0][0].splitlines()[-1] == proc.stdout.splitlines()[-1]  # same kNN line


@pytest.mark.multiprocess
@pytest.mark.slow
def test_dead_worker_stops_the_survivor_and_a_restart_resumes(tmp_path):
    import glob
    import signal
    import time

    from tf_instcls.training import checkpoints

    model_dir = tmp_path / "run"
    extra = ["--epochs=20", "--gin_bindings=TrainConfig.checkpoint_every_steps = 5",
             "--gin_bindings=MonitorConfig.every_epochs = 0"]
    procs = _start_train_clients(model_dir, extra)
    deadline = time.time() + 300
    while time.time() < deadline and not glob.glob(str(model_dir / "checkpoints" / "*.index")):
        assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
        time.sleep(0.2)
    time.sleep(1.0)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    try:
        _, stderr = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
    assert time.time() - killed < 120
    assert procs[0].returncode != 0
    assert "WorkerLostError" in stderr and "lost contact with another process" in stderr
    latest = checkpoints.newest_valid(str(model_dir / "checkpoints"), move_damaged=False)
    checkpoints.verify(latest)
    no_knn = "--gin_bindings=MonitorConfig.every_epochs = 0"
    outs = _finish(_start_train_clients(model_dir, ["--epochs=2", no_knn]))
    for stdout, stderr in outs:
        assert "resumed from" in stdout and "done" in stdout, stderr[-3000:]

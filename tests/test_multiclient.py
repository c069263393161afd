"""Multi-process DTensor: 2 clients x 2 virtual CPUs on localhost, W sharded over all 4."""

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

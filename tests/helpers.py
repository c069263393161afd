"""Small shared test helpers (mesh-aware steps and tolerance checks)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tf_instcls import parallel
from tf_instcls.losses import instance_classification_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env() -> dict:
    """Environment of the tests' child processes: this checkout importable, quiet TF."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    return env


def absl_mains_in_a_child(modules, path=()) -> list[str]:
    """Imports each absl main of ``modules`` in turn in one child process (``path``
    first on sys.path), dropping the flags each defined before the next (they share
    names), and checks that each has a docstring, a ``main`` and a help text for every
    flag it defines. Returns the modules in the order they passed."""
    import subprocess
    import sys

    code = (
        "import importlib, sys\n"
        "from absl import flags\n"
        f"sys.path[:0] = {[str(p) for p in path]!r}\n"
        "for name in sys.argv[1:]:\n"
        "    before = set(flags.FLAGS)\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__doc__ and callable(module.main), name\n"
        "    for flag in sorted(set(flags.FLAGS) - before):\n"
        "        assert (flags.FLAGS[flag].help or '').strip(), (name, flag)\n"
        "        delattr(flags.FLAGS, flag)\n"
        "    print(name)\n")
    done = subprocess.run([sys.executable, "-c", code, *modules], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def assert_close(actual, expected, rtol=1e-5, name="value"):
    """Relative error max|a - e| / max|e| below rtol (what the issue asks for)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(np.abs(expected).max(), 1e-12)
    err = np.abs(actual - expected).max() / scale
    assert err < rtol, f"{name}: relative error {err:.3g} >= {rtol}"


def pack_batch(mesh, *arrays):
    """Each array (or None) batch-sharded on ``mesh``, or a plain tensor when it is None."""
    if mesh is None:
        return [None if a is None else tf.constant(a) for a in arrays]
    return [None if a is None else
            parallel.pack_sharded(a, parallel.batch_layout(mesh, np.ndim(a))) for a in arrays]


def loss_and_grads(mesh, class_weights, x, ids, hard, upstream, **loss_kwargs):
    """Loss [B], dL/dx, dL/dW of sum(upstream * loss), inside a tf.function on ``mesh``."""
    xd, idd, hd, ud = pack_batch(mesh, x, ids, hard, upstream)

    @tf.function
    def step(xd, idd, hd, ud):
        with tf.GradientTape() as tape:
            tape.watch(xd)
            loss = instance_classification_loss(
                xd, idd, class_weights, hard_negatives=hd, **loss_kwargs
            )
            total = tf.reduce_sum(loss * ud)
        grad_x, grad_w = tape.gradient(total, [xd, class_weights])
        return loss, grad_x, grad_w

    loss, grad_x, grad_w = step(xd, idd, hd, ud)
    return parallel.to_numpy(loss), parallel.to_numpy(grad_x), parallel.to_numpy(grad_w)

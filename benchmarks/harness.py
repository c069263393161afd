"""What the benchmarks and experiment drivers share: the checkout, child processes,
seed spreads, an encoder's SGD step, per-op profiles and each core's busy share."""

from __future__ import annotations

import os

import numpy as np

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCHMARKS)
GIN_DIR = os.path.join(ROOT, "gin")
# The 5,085 real CIFAR-10 images of the maintainers' workspace (../shared beside the
# checkout): the default data of the quality and speed benchmarks.
CIFAR_SUBSET = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10_subset_train.npz")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def spread(values: list) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof 1; None for one value) of the non-missing values: the
    seed-to-seed spread of run_recipe and run_ablation."""
    import numpy as np

    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def subprocess_env(code_dir: str = ROOT) -> dict:
    """Environment for a child tool process: quiet TF logs, the checkout ``code_dir``
    (default: this one) importable first."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(code_dir), env.get("PYTHONPATH", "")])
    import tf_instcls

    if not tf_instcls.ONEDNN_FROM_ENVIRONMENT:  # set by this process' tf_instcls: a child
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # (maybe another checkout) sets its own
    return env


def encoder_sgd_step(encoder, variables, *, jit_compile=False):
    """tf.function of the benchmarks: forward + backward + plain SGD (lr 0.01) of an
    encoder with loss = mean squared embedding, on ``variables`` (the encoder's own, or
    their DTensor handles)."""
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            out = encoder(x, training=True)
            loss = tf.reduce_mean(tf.square(tf.cast(out["embedding"], tf.float32)))
        grads = tape.gradient(loss, variables)
        for v, g in zip(variables, grads):
            v.assign_sub(0.01 * tf.cast(g, v.dtype))
        return loss

    return step


def op_self_times(call, calls: int = 5, *, by_name: bool = False) -> dict:
    """Self time (us) per op type (or per (type, name) with ``by_name``), summed over
    ``calls`` calls of ``call`` run under TensorFlow's profiler."""
    import collections
    import glob
    import json
    import tempfile

    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    with tempfile.TemporaryDirectory(prefix="tf_instcls_profile_") as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(calls):
            call()
        tf.profiler.experimental.stop()
        files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        data, ok = plugin.xspace_to_tools_data(files, "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"the profiler's op stats could not be read from {files}")
    table = json.loads(data)[0]
    columns = [c["id"] for c in table["cols"]]
    totals = collections.Counter()
    for row in table["rows"]:
        values = dict(zip(columns, [c.get("v") for c in row["c"]]))
        key = (values["type"], values["operation"]) if by_name else values["type"]
        totals[key] += values["total_self_time"]
    return dict(totals)


def cpu_times() -> np.ndarray:
    """[cores, 2]: (busy, total) jiffies of each core since boot, from /proc/stat."""
    rows = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
                rows.append((sum(v) - idle, sum(v)))
    return np.array(rows, np.float64)


def busy_share(before: np.ndarray, after: np.ndarray) -> list[float]:
    """Each core's busy fraction between two cpu_times() readings."""
    delta = after - before
    return [float(b / t) if t else 0.0 for b, t in delta]

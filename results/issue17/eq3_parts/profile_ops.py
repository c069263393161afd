"""Where Eq. 3's extra time goes, op by op (issue 17, item 2): the benchmark's Eq. 1 and
Eq. 3 steps (tools/bench_classifier.py --paired: T = 1 virtual device, W sharded, N =
262,144, D = 128, B = 1024, K = 100, random targets), built on the same W in one process
and each profiled for --steps steps with the TensorFlow profiler; per op type, the
self-time per step of each and the difference, largest first.

  python results/issue17/eq3_parts/profile_ops.py --steps=6 > results/issue17/eq3_parts/ops.md
"""

import collections
import glob
import json
import os
import sys
import tempfile

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))

flags.DEFINE_integer("num_instances", 262144, "N")
flags.DEFINE_integer("dim", 128, "D")
flags.DEFINE_integer("batch_size", 1024, "B")
flags.DEFINE_integer("num_hard", 100, "K")
flags.DEFINE_integer("steps", 6, "profiled steps of each")
flags.DEFINE_integer("top", 25, "op types listed")
flags.DEFINE_integer("inter_op", 1, "inter-op threads: 1 runs one op at a time, so an op's "
                     "self-time is not inflated by ops running beside it (0: TF's default)")
FLAGS = flags.FLAGS


def _op_stats(fn, steps, logdir):
    """{(type, name): self-time us per step} of ``steps`` calls of ``fn``."""
    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        fn()
    tf.profiler.experimental.stop()
    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    data, ok = plugin.xspace_to_tools_data(paths, "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"the profiler wrote nothing readable in {logdir}")
    table = json.loads(data)[0]
    cols = [c["id"] for c in table["cols"]]
    out = collections.Counter()
    for row in table["rows"]:
        cells = dict(zip(cols, (c.get("v") for c in row["c"])))
        out[(cells["type"], cells["operation"])] += cells["total_self_time"] / steps
    return out


def main(argv):
    del argv
    from tf_instcls import parallel

    parallel.configure_virtual_devices(1)
    import tensorflow as tf

    if FLAGS.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op)

    from tf_instcls.losses import instance_classification_loss
    from tf_instcls.training import MomentumSGD

    n, d, b, k = FLAGS.num_instances, FLAGS.dim, FLAGS.batch_size, FLAGS.num_hard
    mesh = parallel.build_mesh(None)
    clf = parallel.InstanceClassifier(n, d, mesh=mesh, layout="sharded", init_stddev=0.01)
    w = clf.class_weights
    opt = MomentumSGD(momentum=0.9, weight_decay=1e-4)
    opt.build([w])
    rng = np.random.default_rng(0)
    x = parallel.pack_sharded(rng.normal(size=(b, d)).astype(np.float32),
                              parallel.batch_layout(mesh, 2))
    ids = parallel.pack_sharded(rng.integers(0, n, b).astype(np.int32),
                                parallel.batch_layout(mesh, 1))
    hard = parallel.pack_sharded(rng.integers(0, n, (b, k)).astype(np.int32),
                                 parallel.batch_layout(mesh, 2))

    def make_step(smoothing):
        @tf.function
        def step(x, ids, hard):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = instance_classification_loss(
                    x, ids, w, hard_negatives=hard, smoothing=smoothing, valid_classes=n)
                mean = tf.reduce_mean(loss)
            grad_x, grad_w = tape.gradient(mean, [x, w])
            opt.apply_gradients([(grad_w, w)], 0.1)
            return mean, tf.reduce_sum(grad_x)
        return step

    eq1, eq3 = make_step(0.0), make_step(0.2)
    runs = {"eq1": lambda: eq1(x, ids, None)[0].numpy(),
            "eq3": lambda: eq3(x, ids, hard)[0].numpy()}
    for _ in range(2):
        for fn in runs.values():
            fn()
    stats = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in runs.items():
            stats[name] = _op_stats(fn, FLAGS.steps, os.path.join(tmp, name))
    by_type = {name: collections.Counter() for name in stats}
    for name, counter in stats.items():
        for (kind, _), us in counter.items():
            by_type[name][kind] += us
    kinds = sorted(set(by_type["eq1"]) | set(by_type["eq3"]),
                   key=lambda t: -abs(by_type["eq3"][t] - by_type["eq1"][t]))
    total1, total3 = sum(by_type["eq1"].values()), sum(by_type["eq3"].values())
    print(f"N = {n}, D = {d}, B = {b}, K = {k}, {FLAGS.steps} profiled steps each, "
          f"inter-op threads {FLAGS.inter_op or 'default'}; "
          "self-time per step, ms (the profiler's op self-times; its own overhead included)\n")
    print("| op type | Eq. 1 ms | Eq. 3 ms | Eq. 3 - Eq. 1 ms |")
    print("|---|---|---|---|")
    for t in kinds[: FLAGS.top]:
        a, c = by_type["eq1"][t] / 1e3, by_type["eq3"][t] / 1e3
        print(f"| {t} | {a:.1f} | {c:.1f} | {c - a:+.1f} |")
    print(f"| all ops | {total1 / 1e3:.1f} | {total3 / 1e3:.1f} | "
          f"{(total3 - total1) / 1e3:+.1f} ({total3 / total1:.3f} x) |")
    print("\nEq. 3's own ops (not in Eq. 1's profile), by name:\n")
    names1 = {name for _, name in stats["eq1"]}
    own = [(us, key) for key, us in stats["eq3"].items() if key[1] not in names1]
    for us, (kind, name) in sorted(own, reverse=True)[: FLAGS.top]:
        print(f"- {kind} `{name}`: {us / 1e3:.1f} ms")


if __name__ == "__main__":
    app.run(main)

"""Where Eq. 3's extra time goes, op by op (issue 17, item 2): the benchmark's Eq. 1 and
Eq. 3 steps (tools/bench_classifier.py's ``build_steps``, as ``--paired`` builds them: T =
1 virtual device, W sharded, N = 262,144, D = 128, B = 1024, K = 100, random targets) on
the same W in one process, each profiled for --steps steps with TensorFlow's profiler
(tools/common.py's ``op_self_times``); per op type, the self-time per step of each and
the difference, largest first. bench_classifier's flags set the size.

  python results/issue17/eq3_parts/profile_ops.py --steps=6 \
      > results/issue17/eq3_parts/ops_inter1.md
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))
from tools import bench_classifier, common  # noqa: E402  (the repository's tools/)

flags.DEFINE_integer("top", 25, "op types listed")
flags.DEFINE_integer("inter_op", 1, "inter-op threads: 1 runs one op at a time, so an op's "
                     "self-time is not inflated by ops running beside it (0: TF's default)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from tf_instcls import parallel

    parallel.configure_virtual_devices(1)
    import tensorflow as tf

    if FLAGS.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op)
    config = {"num_instances": FLAGS.num_instances, "dim": FLAGS.dim,
              "batch_size": FLAGS.batch_size, "chunk_size": 0, "layout": "sharded",
              "smoothing": 0.2, "num_hard": FLAGS.num_hard}
    make_step, x, ids, hard, _, _ = bench_classifier.build_steps(
        config, parallel.build_mesh(None))
    eq1, eq3 = make_step(0.0), make_step(config["smoothing"])
    runs = {"eq1": lambda: eq1(x, ids, None)[0].numpy(),
            "eq3": lambda: eq3(x, ids, hard)[0].numpy()}
    for _ in range(2):
        for fn in runs.values():
            fn()
    steps = FLAGS.steps
    by_type = {name: common.op_self_times(fn, steps) for name, fn in runs.items()}
    kinds = sorted(set(by_type["eq1"]) | set(by_type["eq3"]),
                   key=lambda t: -abs(by_type["eq3"].get(t, 0) - by_type["eq1"].get(t, 0)))
    total1, total3 = sum(by_type["eq1"].values()), sum(by_type["eq3"].values())
    print(f"N = {config['num_instances']}, D = {config['dim']}, B = {config['batch_size']}, "
          f"K = {config['num_hard']}, {steps} profiled steps each, inter-op threads "
          f"{FLAGS.inter_op or 'default'}; self-time per step, ms (the profiler's op "
          "self-times; its own overhead included)\n")
    print("| op type | Eq. 1 ms | Eq. 3 ms | Eq. 3 - Eq. 1 ms |")
    print("|---|---|---|---|")
    for t in kinds[: FLAGS.top]:
        a, c = by_type["eq1"].get(t, 0) / steps / 1e3, by_type["eq3"].get(t, 0) / steps / 1e3
        print(f"| {t} | {a:.1f} | {c:.1f} | {c - a:+.1f} |")
    print(f"| all ops | {total1 / steps / 1e3:.1f} | {total3 / steps / 1e3:.1f} | "
          f"{(total3 - total1) / steps / 1e3:+.1f} ({total3 / total1:.3f} x) |")


if __name__ == "__main__":
    app.run(main)

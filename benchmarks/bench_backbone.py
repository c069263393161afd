r"""Train-step throughput of the encoder alone (forward + backward + SGD), by precision
and batch size, measured side by side: the configurations take turns, --rounds times,
and each figure is the median over rounds (spread: min-max).

  python benchmarks/bench_backbone.py --backbone=resnet18_cifar --width=16 --image_size=32 \
      --batch_sizes=128,256 --precisions=float32,mixed_bfloat16 --rounds=5 \
      --out=runs/bench/bench_backbone.json

Images/s counts views (the pretraining step runs 2 views per instance). No DTensor:
the encoder's own cost, the part that dominates small-N pretraining on a CPU.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

import harness

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", "resnet18_cifar", "Backbone name.")
flags.DEFINE_integer("width", 16, "Backbone width.")
flags.DEFINE_integer("image_size", 32, "Image side.")
flags.DEFINE_integer("head_hidden_dim", 512, "MLP head hidden width.")
flags.DEFINE_list("batch_sizes", ["256"], "Views per step.")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Keras dtype policies.")
flags.DEFINE_list("jit", ["false"], "jit_compile settings to compare (true / false).")
flags.DEFINE_integer("steps", 10, "Timed steps per round.", lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.", lower_bound=1)
flags.DEFINE_string("out", None, "JSON path (optional).")


def make_step(precision, batch, jit):
    import keras
    import tensorflow as tf

    from tf_instcls import models

    keras.utils.set_random_seed(0)
    encoder = models.build_encoder(FLAGS.backbone, FLAGS.image_size,
                                   head_hidden_dim=FLAGS.head_hidden_dim,
                                   backbone_width=FLAGS.width, precision=precision)
    images = tf.random.normal([batch, FLAGS.image_size, FLAGS.image_size, 3])
    step = harness.encoder_sgd_step(encoder, encoder.trainable_variables, jit_compile=jit)

    step(images).numpy()  # trace + warm up
    step(images).numpy()
    return lambda: step(images).numpy()


def main(argv):
    del argv
    configs = [(p, int(b), j.lower() == "true") for p in FLAGS.precisions
               for b in FLAGS.batch_sizes for j in FLAGS.jit]
    steps = {c: make_step(*c) for c in configs}
    times = {c: [] for c in configs}
    for _ in range(FLAGS.rounds):
        for c in configs:
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                steps[c]()
            times[c].append((time.perf_counter() - start) / FLAGS.steps)
    rows = []
    base = None
    for c in configs:
        ts = sorted(times[c])
        median = ts[len(ts) // 2]
        rate = c[1] / median
        base = base or rate
        rows.append({"precision": c[0], "batch_views": c[1], "jit_compile": c[2],
                     "step_ms_median": 1e3 * median, "step_ms_min": 1e3 * ts[0],
                     "step_ms_max": 1e3 * ts[-1], "views_per_sec": rate,
                     "speedup_vs_first": rate / base})
        print(f"{c[0]:>15} batch {c[1]:4d} jit {c[2]!s:5}: {1e3 * median:7.1f} ms/step "
              f"({1e3 * ts[0]:.1f}-{1e3 * ts[-1]:.1f}), {rate:7.0f} views/s, "
              f"x{rate / base:.2f}")
    if FLAGS.out:
        os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
        with open(FLAGS.out, "w") as f:
            json.dump({"backbone": FLAGS.backbone, "width": FLAGS.width,
                       "image_size": FLAGS.image_size, "rounds": FLAGS.rounds,
                       "steps": FLAGS.steps, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)

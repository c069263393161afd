"""Where Eq. 3's extra cost goes (issue 17, item 2): the label-term pieces of the sparse
gradient (CosineSoftmax._sparse_gradient and _label_rows) timed alone at the benchmark's
size, K' = 101 (Eq. 3) against K' = 1 (Eq. 1), on plain tensors (no DTensor), and the
alternatives tried for each. Interleaved: every round runs every variant once, in an order
that rotates by round. Prints the median ms of each and its interquartile range.

  python results/issue17/eq3_parts/parts.py --rounds=15 --json=results/issue17/eq3_parts/parts.json
"""

import json
import statistics
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

flags.DEFINE_integer("num_instances", 262144, "N")
flags.DEFINE_integer("dim", 128, "D")
flags.DEFINE_integer("batch_size", 1024, "B")
flags.DEFINE_integer("num_hard", 100, "K (K' = K + 1)")
flags.DEFINE_integer("rounds", 15, "interleaved rounds")
flags.DEFINE_string("json", None, "write the medians here")
flags.DEFINE_integer("inter_op", 0, "inter-op threads (0: TF's default)")
FLAGS = flags.FLAGS


def x_gather(w, t, g):  # the shipped label term of dJ/dx
    return tf.reduce_sum(tf.expand_dims(g, 2) * tf.gather(w, t), axis=1)


def x_bmm(w, t, g):  # 1bfba01's batched matmul (reverted: no gain)
    return tf.squeeze(tf.matmul(tf.expand_dims(g, 1), tf.gather(w, t)), 1)


def w_segsum(t, g, x, dense_t):  # the shipped label rows, and grad_w = dense^T - label
    n, d = dense_t.shape[1], x.shape[1]
    updates = tf.expand_dims(g, 2) * tf.expand_dims(x, 1)
    label = tf.math.unsorted_segment_sum(tf.reshape(updates, [-1, d]), tf.reshape(t, [-1]), n)
    return tf.transpose(dense_t) - label


def w_scatter(t, g, x, dense_t):  # label rows scattered into dense^T (a copy of [N, D])
    updates = -tf.expand_dims(g, 2) * tf.expand_dims(x, 1)
    return tf.tensor_scatter_nd_add(
        tf.transpose(dense_t), tf.reshape(t, [-1, 1]), tf.reshape(updates, [-1, x.shape[1]]))


def w_scatternd(t, g, x, dense_t):  # label rows by ScatterNd, then grad_w = dense^T - label
    n, d = dense_t.shape[1], x.shape[1]
    updates = tf.expand_dims(g, 2) * tf.expand_dims(x, 1)
    label = tf.scatter_nd(tf.reshape(t, [-1, 1]), tf.reshape(updates, [-1, d]), [n, d])
    return tf.transpose(dense_t) - label


def variants(n, d, b, k1):
    """name -> a tf.function of no arguments over fixed random inputs, for K' = 1 and
    K' = ``k1``, plus the transpose alone (the part of the w_* variants K' does not change)."""
    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(n, d)).astype(np.float32))
    x = tf.constant(rng.normal(size=(b, d)).astype(np.float32))
    dense_t = tf.constant(rng.normal(size=(d, n)).astype(np.float32))
    out = {"w_transpose_only": tf.function(lambda: tf.transpose(dense_t))}
    for kp in (1, k1):
        t = tf.constant(rng.integers(0, n, (b, kp)).astype(np.int32))
        g = tf.constant(rng.random((b, kp)).astype(np.float32))
        for fn in (x_gather, x_bmm):
            out[f"{fn.__name__} K'={kp}"] = tf.function(lambda fn=fn, t=t, g=g: fn(w, t, g))
        for fn in (w_segsum, w_scatter, w_scatternd):
            out[f"{fn.__name__} K'={kp}"] = tf.function(
                lambda fn=fn, t=t, g=g: fn(t, g, x, dense_t))
    return out


def main(argv):
    del argv
    if FLAGS.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op)
    fns = variants(FLAGS.num_instances, FLAGS.dim, FLAGS.batch_size, FLAGS.num_hard + 1)
    names = sorted(fns)
    for name in names:  # trace and warm up
        fns[name]()[:1].numpy()
    ms = {name: [] for name in names}
    for r in range(FLAGS.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            fns[name]()[:1].numpy()
            ms[name].append(1000 * (time.perf_counter() - start))
    rows = {}
    print("| piece | median ms | interquartile |")
    print("|---|---|---|")
    for name in names:
        q = statistics.quantiles(ms[name], n=4)
        rows[name] = {"median": statistics.median(ms[name]), "q1": q[0], "q3": q[2]}
        print(f"| {name} | {rows[name]['median']:.1f} | {q[0]:.1f}-{q[2]:.1f} |")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump({"config": {k: FLAGS[k].value for k in (
                "num_instances", "dim", "batch_size", "num_hard", "rounds")},
                "ms": ms, "summary": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)

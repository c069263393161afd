"""Issue 17 item 2, microbenchmark on plain tensors (no DTensor), T = 1 size: dW minus
its label rows (g_bk x_b into row t_bk, B K' = 103,424 rows at K' = 101, and K' = 1), as
a segment sum and a subtraction or as TensorScatterAdd into the transposed dense part,
with the rows in the given order or sorted by target. 7 interleaved rounds.

    python results/issue17/eq3_sorted/label_rows_micro.py   # output: label_rows_micro.txt
"""

import time

import numpy as np
import tensorflow as tf

N, D, B, K = 262144, 128, 1024, 101
rng = np.random.default_rng(0)
x = tf.constant(rng.standard_normal((B, D)).astype(np.float32))
g = tf.constant(rng.random((B, K)).astype(np.float32))
t = tf.constant(rng.integers(0, N, (B, K)).astype(np.int32))
dt = tf.constant(rng.standard_normal((D, N)).astype(np.float32))


def rows_plain(g, t, x):
    u = tf.expand_dims(g, 2) * tf.expand_dims(x, 1)
    return tf.reshape(u, [-1, D]), tf.reshape(t, [-1])


def rows_sorted(g, t, x):
    k = t.shape[1]
    tf_ = tf.reshape(t, [-1])
    perm = tf.argsort(tf_)
    gs = tf.gather(tf.reshape(g, [-1]), perm)
    return tf.expand_dims(gs, 1) * tf.gather(x, perm // k), tf.gather(tf_, perm)


def seg(rows):
    @tf.function
    def f(g, t, x, dt):
        u, ids = rows(g, t, x)
        return tf.transpose(dt) - tf.math.unsorted_segment_sum(u, ids, N)

    return f


def scat(rows):
    @tf.function
    def f(g, t, x, dt):
        u, ids = rows(g, t, x)
        return tf.tensor_scatter_nd_add(tf.transpose(dt), tf.expand_dims(ids, 1), -u)

    return f


@tf.function
def transpose_only(g, t, x, dt):
    return tf.transpose(dt)


fs = {
    "seg_plain": seg(rows_plain),
    "seg_sorted": seg(rows_sorted),
    "scat_plain": scat(rows_plain),
    "scat_sorted": scat(rows_sorted),
}
ref = fs["seg_plain"](g, t, x, dt).numpy()
for k, f in fs.items():
    print(k, "max abs diff vs seg_plain", np.abs(f(g, t, x, dt).numpy() - ref).max())
for kk in (K, 1):
    gk, tk = g[:, :kk], t[:, :kk]
    res = {k: [] for k in fs}
    res["transpose"] = []
    allf = dict(fs, transpose=transpose_only)
    for f in allf.values():
        f(gk, tk, x, dt)
    for _ in range(7):
        for k, f in allf.items():
            t0 = time.perf_counter()
            out = f(gk, tk, x, dt)
            _ = out.numpy().ravel()[0]
            res[k].append(1e3 * (time.perf_counter() - t0))
    for k, v in res.items():
        print(f"K'={kk}", k, f"median ms {np.median(v):.1f}", [f"{q:.0f}" for q in v])

"""Issue 17 item 2: the label term of dJ/dx, sum_k g_bk w_{t_bk} [B, D] at T = 1 size,
three ways on plain tensors: gather, multiply and sum (the code's); a batched [1, K'] x
[K', D] matmul; the rows gathered in sorted target order and segment-summed by row.
11 interleaved rounds.

    python results/issue17/eq3_sorted/dx_label_micro.py   # output: dx_label_micro.txt
"""

import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interleave import print_interleaved  # noqa: E402

N, D, B, K = 262144, 128, 1024, 101
rng = np.random.default_rng(0)
x = tf.constant(rng.standard_normal((B, D)).astype(np.float32))
g = tf.constant(rng.random((B, K)).astype(np.float32))
t = tf.constant(rng.integers(0, N, (B, K)).astype(np.int32))
w = tf.constant(rng.standard_normal((N, D)).astype(np.float32))
flat = tf.reshape(t, [-1])


def v1():
    return tf.reduce_sum(tf.expand_dims(g, 2) * tf.gather(w, t), axis=1)


def v2():
    return tf.matmul(tf.expand_dims(g, 1), tf.gather(w, t))[:, 0]


def v3():
    order = tf.argsort(flat)
    gs = tf.gather(tf.reshape(g, [-1]), order)
    return tf.math.unsorted_segment_sum(
        tf.expand_dims(gs, 1) * tf.gather(w, tf.gather(flat, order)), order // K, B
    )


def v3_given_order(order):
    gs = tf.gather(tf.reshape(g, [-1]), order)
    return tf.math.unsorted_segment_sum(
        tf.expand_dims(gs, 1) * tf.gather(w, tf.gather(flat, order)), order // K, B
    )


order = tf.argsort(flat)
fs = {
    "v1_mulsum": tf.function(v1),
    "v2_bmm": tf.function(v2),
    "v3_sorted_incl_sort": tf.function(v3),
    "v3_sorted_given_order": tf.function(lambda: v3_given_order(order)),
}
ref = v1().numpy()
for k, f in fs.items():
    print(k, np.abs(f().numpy() - ref).max())
print_interleaved(fs, 11)

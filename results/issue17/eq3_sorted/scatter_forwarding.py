"""Issue 17 item 2: does TensorScatterAdd update a fresh [B, N] buffer in place on CPU?
One scalar added into exp(x) [1024, 262144] (1 GiB), against exp alone and with the
readers an in-place label update would need. If the input were forwarded, the scatter
would cost microseconds; a copy of 1 GiB costs tens of milliseconds. 5 interleaved rounds.

    python results/issue17/eq3_sorted/scatter_forwarding.py   # output: scatter_forwarding.txt
"""

import os
import sys

import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interleave import print_interleaved  # noqa: E402

B, N = 1024, 262144
x = tf.Variable(tf.random.normal([B, N]) * 0.01)
idx = tf.constant([[0, 0]])
upd = tf.constant([1.0])
w = tf.Variable(tf.random.normal([N, 128]) * 0.01)


@tf.function
def exp_only():
    e = tf.exp(x * 1.0)
    return tf.reduce_sum(e[:1])


@tf.function
def exp_scatter():
    e = tf.exp(x * 1.0)
    e = tf.tensor_scatter_nd_add(e, idx, upd)
    return tf.reduce_sum(e[:1])


@tf.function
def exp_sum_scatter():
    e = tf.exp(x * 1.0)
    s = tf.reduce_sum(e, axis=1)
    e = tf.tensor_scatter_nd_add(e, idx, upd * s[0])
    return tf.reduce_sum(e[:1])


@tf.function
def exp_sum_scatter_matmul():
    e = tf.exp(x * 1.0)
    s = tf.reduce_sum(e, axis=1)
    e = tf.tensor_scatter_nd_add(e, idx, upd * s[0])
    return tf.reduce_sum(tf.matmul(e, w))


@tf.function
def exp_sum_matmul():
    e = tf.exp(x * 1.0)
    s = tf.reduce_sum(e, axis=1)
    return tf.reduce_sum(tf.matmul(e, w)) + s[0]


fs = dict(
    exp_only=exp_only,
    exp_scatter=exp_scatter,
    exp_sum_scatter=exp_sum_scatter,
    exp_sum_scatter_matmul=exp_sum_scatter_matmul,
    exp_sum_matmul=exp_sum_matmul,
)
for f in fs.values():
    f()
print_interleaved(fs, 5)

"""The label rows of dW (g_bk x_b added into row t_bk of the [N, D] gradient, then
subtracted from the dense part) on plain tensors, by TF's kernels and compiled by XLA,
K' = 101 (Eq. 3) against K' = 1 (Eq. 1), at the benchmark's size (N = 262,144, D = 128,
B = 1024). Interleaved, 7 rounds, median ms. Shows what XLA would buy if DTensor ran it
(it does not: it inlines a jit_compile function and runs its ops as TF ops;
ops_inter1_jit_helper.md).

  python results/issue17/eq3_parts/xla_label_rows.py > results/issue17/eq3_parts/xla_label_rows.txt
"""
import time

import numpy as np
import tensorflow as tf
from parts import w_scatter, w_segsum  # this directory (run as a script)

N, D, C, KP = 262144, 128, 1024, 101  # parts.py's defaults


def main():
    rng = np.random.default_rng(0)
    t = tf.constant(rng.integers(0, N, (C, KP)).astype(np.int32))
    g = tf.constant(rng.random((C, KP)).astype(np.float32))
    x = tf.constant(rng.normal(size=(C, D)).astype(np.float32))
    dense_t = tf.constant(rng.normal(size=(D, N)).astype(np.float32))
    fns = {"tf": tf.function(w_segsum), "xla": tf.function(w_segsum, jit_compile=True),
           "xla_scatter": tf.function(w_scatter, jit_compile=True)}
    inputs = {"K'=101": (t, g), "K'=1": (t[:, :1], g[:, :1])}
    for fn in fns.values():
        for tt, gg in inputs.values():
            fn(tt, gg, x, dense_t)
    ms = {}
    for _ in range(7):  # interleaved rounds
        for name, fn in fns.items():
            for kind, (tt, gg) in inputs.items():
                start = time.perf_counter()
                fn(tt, gg, x, dense_t)[:1].numpy()
                ms.setdefault(f"{name} {kind}", []).append(1000 * (time.perf_counter() - start))
    for key, values in ms.items():
        print(key, round(float(np.median(values)), 1), "ms")
    ref = fns["tf"](t, g, x, dense_t)
    print("max |difference| from TF's:",
          *(float(tf.reduce_max(tf.abs(ref - fns[k](t, g, x, dense_t))))
            for k in ("xla", "xla_scatter")))


if __name__ == "__main__":
    main()

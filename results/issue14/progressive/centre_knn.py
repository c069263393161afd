"""Weighted kNN (k = 200, T = 0.07) of exports' outputs as they are, centred (minus the
bank's mean) and L2-normalised then centred (SimpleShot's CL2N, Wang et al. 2019), on
the split of tools/run_recipe.py. An observation about the kNN protocol, not a change
to any export:

  python results/issue14/progressive/centre_knn.py SPLIT_DIR EXPORT_VERSION_DIR...
"""
import sys

import numpy as np
import tensorflow as tf

from tf_instcls.eval.knn import weighted_knn

split = sys.argv[1]
train, holdout = np.load(f"{split}/train_labelled.npz"), np.load(f"{split}/holdout.npz")
for export in sys.argv[2:]:
    serve = tf.saved_model.load(export).signatures["serving_default"]

    def outputs(x, serve=serve):
        parts = [serve(images=tf.constant(x[i:i + 512])) for i in range(0, len(x), 512)]
        return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}

    bank, queries = outputs(train["x"]), outputs(holdout["x"])
    for key in ("features", "embedding"):
        a, b = bank[key], queries[key]
        raw = weighted_knn(a, train["y"], b, holdout["y"])["top1"]
        mean = a.mean(0)
        centred = weighted_knn(a - mean, train["y"], b - mean, holdout["y"])["top1"]
        an = a / np.linalg.norm(a, axis=1, keepdims=True)
        bn = b / np.linalg.norm(b, axis=1, keepdims=True)
        mean = an.mean(0)
        cl2n = weighted_knn(an - mean, train["y"], bn - mean, holdout["y"])["top1"]
        print(f"{export} {key}: as exported {raw:.2f}, centred {centred:.2f}, "
              f"L2 then centred {cl2n:.2f}", flush=True)

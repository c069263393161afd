"""Subprocess: runs one loss + gradient step on 4 virtual CPUs with MLIR dumping on.

TF_DUMP_GRAPH_PREFIX and TF_CPP_VMODULE must be set before TensorFlow starts, hence a
separate process. Usage: python hlo_probe_worker.py LAYOUT CHUNK SMOOTHING
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from tf_instcls import parallel  # noqa: E402

parallel.configure_virtual_devices(4)

import numpy as np  # noqa: E402

from helpers import loss_and_grads  # noqa: E402

N, D, B, K = 4093, 24, 16, 5  # padded to 4096 rows: 1024 per device

layout, chunk, smoothing = sys.argv[1], int(sys.argv[2]) or None, float(sys.argv[3])
mesh = parallel.build_mesh(4)
clf = parallel.InstanceClassifier(N, D, mesh=mesh, layout=layout)
rng = np.random.default_rng(0)
loss_and_grads(
    mesh, clf.class_weights,
    rng.normal(size=(B, D)).astype(np.float32), rng.integers(0, N, B).astype(np.int32),
    rng.integers(0, N, (B, K)).astype(np.int32), np.ones(B, np.float32),
    smoothing=smoothing, chunk_size=chunk, valid_classes=N,
)
print("done")

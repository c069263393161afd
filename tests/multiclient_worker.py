"""One DTensor client of the multi-process loss test (2 processes x 2 virtual CPUs).

The DTENSOR_* environment is set by the test. Usage: multiclient_worker.py OUT.npz
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from tf_instcls import parallel  # noqa: E402

parallel.configure_virtual_devices(2)
parallel.initialize_multi_client("CPU")

import numpy as np  # noqa: E402

from helpers import loss_and_grads  # noqa: E402

N, D, B, K = 13, 6, 8, 3
mesh = parallel.build_mesh(device_type="CPU")
assert mesh.size == 4 and mesh.num_local_devices() == 2, mesh
clf = parallel.InstanceClassifier(N, D, mesh=mesh, layout="sharded", seed=11)
rng = np.random.default_rng(0)
x = rng.normal(size=(B, D)).astype(np.float32)
ids = rng.integers(0, N, B).astype(np.int32)
hard = rng.integers(0, N, (B, K)).astype(np.int32)
upstream = rng.uniform(0.5, 2.0, B).astype(np.float32)
w = parallel.to_numpy(clf.class_weights)
loss, grad_x, grad_w = loss_and_grads(
    mesh, clf.class_weights, x, ids, hard, upstream, smoothing=0.2, chunk_size=4,
    valid_classes=N,
)
# a time budget's agreement: each process offers its own figures, all get the maximum
client = int(os.environ["DTENSOR_CLIENT_ID"])
agreed = parallel.layouts.max_over_processes([client, 10.0 - client, 2.5], mesh)
np.savez(sys.argv[1], x=x, ids=ids, hard=hard, upstream=upstream, w=w,
         loss=loss, grad_x=grad_x, grad_w=grad_w, agreed=agreed)
print("done", flush=True)

"""Features of every image of a source, computed on the mesh (BN in inference mode)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.experimental import dtensor

from tf_instcls import data as data_lib
from tf_instcls import parallel
from tf_instcls.parallel import layouts

_INFER_FNS: dict = {}


def _inference_fn(encoder, training=False):
    """One tf.function per encoder and BN mode, so repeated evaluations do not retrace.

    ``training=True`` makes BN use batch statistics and update its running statistics
    (the contrastive prior's pass); no other weight changes.
    """
    key = (id(encoder), training)
    if key not in _INFER_FNS:

        @tf.function
        def infer(images):
            out = encoder(images, training=training)
            return out["features"], out["embedding"]

        _INFER_FNS[key] = (encoder, infer)  # keeps the encoder alive with its id
    return _INFER_FNS[key][1]


def extract_features(encoder, source, image_size: int, mesh, *, batch_size: int = 256,
                     progress: bool = False, training: bool = False) -> dict:
    """``{"features": [N, F], "embedding": [N, D]}`` as numpy, in id order."""
    batch_size = max(mesh.size, batch_size - batch_size % mesh.size)
    multi = parallel.is_multi_client()
    dataset = data_lib.make_eval_dataset(
        source, image_size, batch_size=batch_size,
        process_index=dtensor.client_id() if multi else 0,
        process_count=dtensor.num_clients() if multi else 1,
    )

    infer = _inference_fn(encoder, training)
    layout = layouts.batch_layout(mesh, 4)
    feats, embs = [], []
    total = int(np.ceil(source.num_images / batch_size))
    bar = tf.keras.utils.Progbar(total, verbose=1 if progress else 0, unit_name="batch")
    for batch in dataset:
        f, e = infer(layouts.pack_local_batch(batch["images"], layout))
        feats.append(parallel.to_numpy(f))
        embs.append(parallel.to_numpy(e))
        bar.add(1)
    n = source.num_images
    return {"features": np.concatenate(feats)[:n], "embedding": np.concatenate(embs)[:n]}

"""Features of every image of a source, computed on the mesh (BN in inference mode)."""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from tf_instcls import data as data_lib
from tf_instcls import parallel
from tf_instcls.parallel import layouts, preemption, watchdog

# Batches between two checks for a stop request in a multi-client run, where a check is
# a collective (in a single process it is a flag: every batch).
_STOP_CHECK_BATCHES = 8
# encoder -> {training: tf.function}. Weak keys, and each function reaches its encoder
# through a weak reference: the cache never keeps an encoder (and its variables) alive.
_INFER_FNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inference_fn(encoder, training=False):
    """One tf.function per encoder and BN mode, so repeated evaluations do not retrace.

    ``training=True`` makes BN use batch statistics and update its running statistics
    (the contrastive prior's pass); no other weight changes.
    """
    functions = _INFER_FNS.setdefault(encoder, {})
    if training not in functions:
        model = weakref.ref(encoder)

        @tf.function
        def infer(images):
            out = model()(images, training=training)
            return out["features"], out["embedding"]

        functions[training] = infer
    return functions[training]


def mesh_batch_size(batch_size: int, mesh) -> int:
    """``batch_size`` rounded down to a multiple of the mesh size (at least one row each)."""
    return max(mesh.size, batch_size - batch_size % mesh.size)


def run_encoder(encoder, batches, mesh, *, training: bool = False, total: int | None = None,
                progress: bool = False) -> dict:
    """Encoder outputs for an iterable of image batches (each split over the mesh).

    Returns ``{"features", "embedding"}`` as numpy, the batches concatenated in order.
    """
    infer = _inference_fn(encoder, training)
    layout = layouts.batch_layout(mesh, 4)
    feats, embs = [], []
    bar = tf.keras.utils.Progbar(total, verbose=1 if progress else 0, unit_name="batch")
    every = 1 if parallel.process_count() == 1 else _STOP_CHECK_BATCHES
    for index, images in enumerate(batches):
        f, e = infer(layouts.pack_local_batch(images, layout))
        feats.append(parallel.to_numpy(f))
        embs.append(parallel.to_numpy(e))
        bar.add(1)
        watchdog.beat()  # long feature passes (prior, kNN monitor) are progress too
        if index % every == every - 1:
            preemption.check(mesh)  # a run's SIGTERM: give up the pass (StopRequested)
    return {"features": np.concatenate(feats), "embedding": np.concatenate(embs)}


def extract_features(encoder, source, image_size: int, mesh, *, batch_size: int = 256,
                     progress: bool = False, training: bool = False, augment=None,
                     epoch: int = 0, seed: int = 0) -> dict:
    """``{"features": [N, F], "embedding": [N, D]}`` as numpy, in id order (eval view,
    or the stateless augmented view of (seed, epoch) with ``augment``)."""
    batch_size = mesh_batch_size(batch_size, mesh)
    dataset = data_lib.make_eval_dataset(
        source, image_size, batch_size=batch_size,
        process_index=parallel.process_index(), process_count=parallel.process_count(),
        augment=augment, epoch=epoch, seed=seed,
    )
    total = int(np.ceil(source.num_images / batch_size))
    out = run_encoder(encoder, (batch["images"] for batch in dataset), mesh,
                      training=training, total=total, progress=progress)
    return {key: value[: source.num_images] for key, value in out.items()}

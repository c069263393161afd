"""tf.data pipelines: an epoch is a seeded permutation of instance ids, two views each.

Everything is a pure function of (seed, epoch, step), so a resumed run starts exactly
at the next batch of the interrupted epoch with the same views.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_instcls.data.augment import AugmentConfig, augment_view, eval_view, view_seed
from tf_instcls.data.sources import ImageSource, resize_uint8


def steps_per_epoch(num_images: int, global_batch_size: int) -> int:
    steps = num_images // global_batch_size
    if steps < 1:
        raise ValueError(
            f"batch size {global_batch_size} is larger than the dataset ({num_images} images)"
        )
    return steps


def epoch_permutation(num_images: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_images).astype(np.int32)


def epoch_batch_ids(num_images: int, global_batch_size: int, *, epoch: int, seed: int,
                    start_step: int = 0, process_index: int = 0,
                    process_count: int = 1) -> np.ndarray:
    """This process' instance ids for one epoch, global batch after global batch.

    The epoch is the seeded permutation, cut into full global batches (the incomplete
    last one is dropped); process p takes rows [p b, (p + 1) b) of every global batch
    (b = global_batch_size / process_count), so processes never overlap or leave gaps.
    """
    if global_batch_size % process_count:
        raise ValueError(
            f"global batch {global_batch_size} not divisible by {process_count} processes"
        )
    steps = steps_per_epoch(num_images, global_batch_size)
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step {start_step} outside [0, {steps}]")
    local = global_batch_size // process_count
    perm = epoch_permutation(num_images, seed, epoch)[: steps * global_batch_size]
    perm = perm.reshape(steps, global_batch_size)[start_step:]
    return perm[:, process_index * local : (process_index + 1) * local].reshape(-1)


def make_train_dataset(
    source: ImageSource,
    config: AugmentConfig,
    *,
    global_batch_size: int,
    epoch: int,
    start_step: int = 0,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_parallel_calls: int | None = None,
    last_epoch: int | None = None,
    views: int = 2,
) -> tf.data.Dataset:
    """Batches ``{"images": uint8->float [b, V, S, S, 3], "ids": int32 [b]}`` (V =
    ``views`` augmented views of each image) for the epochs ``epoch .. last_epoch - 1``
    (default: ``epoch`` alone), one after another.

    ``b`` is this process' share of the global batch: process p takes rows
    [p b, (p + 1) b) of every global batch, so processes never overlap or leave gaps.
    The last incomplete global batch of an epoch is dropped (the permutation changes
    every epoch, so every image is seen); ``start_step`` skips the first epoch's first
    steps (a resume). Several epochs in one dataset are the same batches as one dataset
    per epoch, but the pipeline is built and traced once and its prefetch runs across
    the epoch boundary, so no epoch starts by waiting for a new pipeline.
    """
    last_epoch = epoch + 1 if last_epoch is None else last_epoch
    if last_epoch <= epoch:
        raise ValueError(f"last_epoch {last_epoch} must be > epoch {epoch}")
    # the ids of one epoch, checked (and the first epoch's cut) here, eagerly
    first_ids = epoch_batch_ids(source.num_images, global_batch_size, epoch=epoch, seed=seed,
                                start_step=start_step, process_index=process_index,
                                process_count=process_count)
    local = global_batch_size // process_count
    load = source.load_fn(None)

    def epoch_ids(e):
        e = int(e)
        if e == epoch:
            return first_ids
        return epoch_batch_ids(source.num_images, global_batch_size, epoch=e, seed=seed,
                               process_index=process_index, process_count=process_count)

    def pairs(e):
        ids = tf.numpy_function(epoch_ids, [e], tf.int32, stateful=False)
        ids.set_shape([None])
        return tf.data.Dataset.from_tensor_slices(ids).map(lambda i: (e, i))

    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2; got {views!r}")

    def augmented(e, instance_id):
        image = load(instance_id)
        # View v's seed does not depend on V: view 0 is the same image either way.
        out = [augment_view(image, view_seed(seed, e, instance_id, v), config)
               for v in range(views)]
        return {"images": tf.stack(out), "ids": instance_id}

    dataset = tf.data.Dataset.range(epoch, last_epoch).flat_map(pairs)
    dataset = dataset.map(augmented, num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE,
                          deterministic=True)
    # every epoch holds whole local batches, so no batch straddles two epochs
    return dataset.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def make_staged_train_dataset(
    source: ImageSource,
    stages,
    *,
    epoch: int,
    last_epoch: int,
    start_step: int = 0,
    **kwargs,
) -> tf.data.Dataset:
    """:func:`make_train_dataset` for epochs ``epoch .. last_epoch - 1`` whose views'
    augmentation changes with the epoch (progressive resizing).

    ``stages`` is ``[(first_epoch, end_epoch, AugmentConfig), ...]``, covering the
    epochs in order. Each stage's epochs are exactly the batches ``make_train_dataset``
    gives them alone (views are a function of (seed, epoch, id) and the stage's
    config); the stages are concatenated into one pipeline, whose batches' spatial
    shape is then unknown until a batch is made (the train step traces once per side).
    ``start_step`` skips steps of the first epoch (a resume); ``kwargs`` are
    :func:`make_train_dataset`'s.
    """
    dataset = None
    for first, end, config in stages:
        lo, hi = max(first, epoch), min(end, last_epoch)
        if lo >= hi:
            continue
        part = make_train_dataset(source, config, epoch=lo, last_epoch=hi,
                                  start_step=start_step if lo == epoch else 0, **kwargs)
        dataset = part if dataset is None else dataset.concatenate(part)
    if dataset is None:
        raise ValueError(f"no stage covers epochs {epoch}..{last_epoch - 1}: {stages!r}")
    return dataset


def eval_preprocess(images_uint8, image_size: int):
    """What evaluation does to a stored image: the source's uint8 resize to
    ``image_size``, then the eval view. One image or a batch; the serving signature uses
    this on raw images of any size so that exported outputs equal evaluation's."""
    return eval_view(resize_uint8(images_uint8, image_size), image_size)


def make_eval_dataset(
    source: ImageSource,
    image_size: int,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    augment: AugmentConfig | None = None,
    epoch: int = 0,
    seed: int = 0,
) -> tf.data.Dataset:
    """One view of every image, in id order, padded to full batches.

    The view is the unaugmented eval view, or with ``augment`` a stateless augmented
    view (of (seed, epoch, id)): linear evaluation's "standard augmentation".
    Yields ``{"images", "ids", "valid"}``; ``valid`` marks the padding rows added to fill
    the last batch (so every batch splits evenly over the mesh).
    """
    n = source.num_images
    total = int(np.ceil(n / batch_size)) * batch_size
    ids = np.arange(total, dtype=np.int32)
    local = batch_size // process_count
    ids = ids.reshape(-1, batch_size)[:, process_index * local : (process_index + 1) * local]
    load = source.load_fn(image_size)

    def one(index):
        valid = index < n
        image = load(tf.minimum(index, n - 1))  # already resized to image_size
        if augment is not None:
            view = augment_view(image, view_seed(seed, epoch, index, 0), augment)
            return {"images": view, "ids": index, "valid": valid}
        return {"images": eval_view(image, image_size), "ids": index, "valid": valid}

    dataset = tf.data.Dataset.from_tensor_slices(ids.reshape(-1))
    dataset = dataset.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

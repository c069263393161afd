"""Semi-supervised fine-tuning (a label fraction) and full fine-tuning (transfer), on the
mesh: backbone replicated and trained with a small lr, a new linear classifier on the
(L2-normalised) pooled features with a large lr, BN over the global batch.

The paper: 1% labels -> backbone lr 0.001, classifier lr 15; 10% -> 0.001 / 10.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_instcls import data as data_lib
from tf_instcls import parallel
from tf_instcls.eval.knn import topk_accuracy
from tf_instcls.parallel import layouts
from tf_instcls.parallel.features import extract_features, mesh_batch_size
from tf_instcls.rows import unit_rows
from tf_instcls.training.optimizer import MomentumSGD
from tf_instcls.training.schedules import cosine_decay

PAPER_LEARNING_RATES = {0.01: (0.001, 15.0), 0.1: (0.001, 10.0)}  # fraction -> (bb, clf)


def label_subset(labels, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted ids of a class-balanced, deterministic ``fraction`` of the labelled set:
    round(fraction * n_c) images of every class c (at least one), chosen by a seeded
    permutation of that class's ids."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1]; got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        count = max(1, int(round(fraction * len(members))))
        chosen.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(chosen))


def tfds_subset_spec(dataset: str, fraction: float) -> str | None:
    """ImageNet's official semi-supervised splits (TFDS ``imagenet2012_subset``) for
    1% / 10%; None for every other dataset (use :func:`label_subset`)."""
    if dataset.startswith("tfds:imagenet2012") and not dataset.startswith(
            "tfds:imagenet2012_subset"):
        name = {0.01: "1pct", 0.1: "10pct"}.get(round(fraction, 4))
        if name:
            return f"tfds:imagenet2012_subset/{name}:train"
    return None


def finetune(encoder, train_source, eval_source, mesh, *, image_size: int, num_classes: int,
             epochs: int = 30, batch_size: int = 256, backbone_lr: float = 0.001,
             classifier_lr: float = 10.0, momentum: float = 0.9, weight_decay: float = 0.0,
             seed: int = 0, progress: bool = True) -> dict:
    """Fine-tunes ``encoder`` (already on ``mesh``) and a new classifier on
    ``train_source`` (labels required); returns eval top-1 / top-5 and the loss curve.

    Training views: random resized crop + flip (``data.supervised_config``), stateless
    per (seed, epoch, id). Both learning rates follow one cosine schedule.
    """
    if train_source.labels is None or eval_source.labels is None:
        raise ValueError("fine-tuning needs labelled train and evaluation sources")
    n = train_source.num_images
    batch = mesh_batch_size(min(batch_size, n), mesh)
    steps_per_epoch = data_lib.steps_per_epoch(n, batch)  # batch <= n: at least one
    total = epochs * steps_per_epoch
    feature_dim = int(encoder.output["features"].shape[-1])
    rng = np.random.default_rng(seed)
    head_w = layouts.replicated_variable(
        rng.normal(0, 0.01, [feature_dim, num_classes]).astype(np.float32), mesh, "ft_w")
    head_b = layouts.replicated_variable(np.zeros([num_classes], np.float32), mesh, "ft_b")
    backbone = [layouts.variable_handle(v) for v in encoder.trainable_variables]
    head = [head_w, head_b]
    optimizer = MomentumSGD(momentum=momentum, weight_decay=weight_decay)
    optimizer.build(backbone + head)
    augment = data_lib.supervised_config(image_size)
    labels = tf.constant(np.asarray(train_source.labels, np.int32))
    load = train_source.load_fn(image_size)

    def dataset_for(epoch):
        order = data_lib.epoch_batch_ids(
            n, batch, epoch=epoch, seed=seed, process_index=parallel.process_index(),
            process_count=parallel.process_count())
        local = batch // parallel.process_count()  # this process' rows of each batch

        def one(index):
            view = data_lib.augment_view(load(index), data_lib.augment.view_seed(
                seed, epoch, index, 0), augment)
            return view, tf.gather(labels, index)

        return (tf.data.Dataset.from_tensor_slices(order)
                .map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE))

    def logits_of(features):
        return tf.matmul(tf.math.l2_normalize(features, axis=-1), head_w) + head_b

    @tf.function
    def step(images, y, scale):
        with tf.GradientTape() as tape:
            logits = logits_of(encoder(images, training=True)["features"])
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, backbone + head)
        optimizer.apply_gradients(zip(grads[: len(backbone)], backbone), backbone_lr * scale)
        optimizer.apply_gradients(zip(grads[len(backbone):], head), classifier_lr * scale)
        return loss

    image_layout = layouts.batch_layout(mesh, 4)
    label_layout = layouts.batch_layout(mesh, 1)
    bar = tf.keras.utils.Progbar(epochs, verbose=1 if progress else 0, unit_name="epoch")
    history, global_step = [], 0
    for epoch in range(epochs):
        losses = []
        for images, y in dataset_for(epoch):
            scale = cosine_decay(global_step, total)
            loss = step(layouts.pack_local_batch(images, image_layout),
                        layouts.pack_local_batch(y, label_layout),
                        layouts.pack_sharded(np.float32(scale), layouts.replicated_layout(
                            mesh, 0)))
            losses.append(float(parallel.to_numpy(loss)))
            global_step += 1
        history.append(float(np.mean(losses)))
        if not np.isfinite(history[-1]):
            raise FloatingPointError(f"fine-tuning loss is {history[-1]} at epoch {epoch}: "
                                     "lower the learning rates")
        bar.add(1, [("loss", history[-1])])
    feats = extract_features(encoder, eval_source, image_size, mesh, batch_size=batch_size)
    w, b = parallel.to_numpy(head_w), parallel.to_numpy(head_b)
    f = unit_rows(feats["features"])
    top1, top5 = topk_accuracy(f @ w + b, eval_source.labels)
    return {"top1": top1, "top5": top5, "loss_curve": history, "epochs": epochs,
            "batch_size": batch, "steps": global_step, "backbone_lr": backbone_lr,
            "classifier_lr": classifier_lr, "num_labelled": n}

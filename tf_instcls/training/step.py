"""The pretraining step: one tf.function on the mesh.

Batch-sharded images (two views per instance), replicated backbone and head, W sharded
by rows. BatchNorm statistics are over the global batch, because DTensor reduces the
batch mean and variance across devices like any other reduction.
"""

from __future__ import annotations

import tensorflow as tf

from tf_instcls.losses import instance_classification_loss_and_accuracy
from tf_instcls.losses.baselines import (
    npid_nce_loss,
    sampled_instance_classification_loss,
    update_memory_bank,
)
from tf_instcls.losses.contrastive import nt_xent_loss
from tf_instcls.parallel import layouts
from tf_instcls.training.optimizer import keep_or_replace, masked

TRAINS_W = ("full", "sampled")  # methods whose W is trained by the optimizer


def make_train_step(encoder, classifier, optimizer, learning_rate_fn, *, smoothing=0.0,
                    hard_table=None, model_config=None, seed=0, npid_z=None,
                    steps_per_epoch=None, loss_scale=None, loss_scale_growth_steps=2000):
    """Returns ``step(images, ids, global_step) -> metrics``.

    images: [b, 2, S, S, 3] float (two views per instance), ids: [b] int32, both
    batch-sharded on the mesh. With ``hard_table`` (the miner's [N, K] table, laid out
    like W) and ``smoothing`` > 0 the loss is Eq. 3, else Eq. 1. The two views of an
    instance are classified against its one shared id. ``model_config`` (a
    ``ModelConfig``) selects the method: full (default), sampled, npid or simclr.
    ``npid_z`` (NPID with NCE): the variables (log Z, epoch of its estimate) that the
    step estimates Z into, once or on each epoch's first step (``steps_per_epoch``).
    ``loss_scale`` (float16 compute): the (scale, finite steps since a change) variables
    of dynamic loss scaling. The loss is multiplied by the scale before the gradient and
    the gradients divided by it; a step whose gradients overflow is skipped like any
    non-finite step and halves the scale (not below 1), ``loss_scale_growth_steps``
    finite steps double it. Such a skip is reported as finite (it is the scaling at
    work) unless the loss itself is not finite or the scale is already 1.
    """
    name = getattr(model_config, "method", "full")
    # Differentiate and update the storage (DVariables) behind the Keras variables.
    handles = [layouts.variable_handle(v) for v in encoder.trainable_variables]
    if name in TRAINS_W:  # NPID's bank (in W's place) is updated by the memory rule
        handles += classifier.distributed_variables
    # BatchNorm's moving statistics change in the forward pass: kept aside so a
    # non-finite step can put them back.
    statistics = [layouts.variable_handle(v) for v in encoder.non_trainable_variables]

    def forward(images, ids, hard_negatives, global_step):
        size = images.shape[2]
        views = tf.reshape(images, [-1, size, size, 3])  # [2b, ...]: views stay adjacent
        view_ids = tf.reshape(tf.stack([ids, ids], axis=1), [-1])  # [2b]
        hard = None
        if hard_negatives is not None:
            hard = tf.reshape(tf.stack([hard_negatives] * 2, axis=1),
                              [-1, hard_negatives.shape[-1]])
        out = encoder(views, training=True)
        if name == "simclr":
            loss, hit = nt_xent_loss(out["embedding"], mesh=classifier.mesh,
                                     temperature=model_config.temperature)
        elif name == "sampled":
            sampled = _draw(model_config.num_sampled, classifier.num_instances, seed, global_step)
            loss, hit = sampled_instance_classification_loss(
                out["embedding"], view_ids, classifier.class_weights, sampled,
                temperature=classifier.temperature, valid_classes=classifier.num_instances)
        elif name == "npid" and model_config.npid_noise > 0:
            noise = _draw(model_config.npid_noise, classifier.num_instances, seed,
                          global_step)
            log_z, z_epoch = npid_z
            epoch = tf.math.floordiv(tf.cast(global_step, tf.int64), steps_per_epoch)
            stale = z_epoch < 0  # never estimated: this batch's estimate
            if model_config.npid_z_estimate == "epoch":
                stale = tf.logical_or(stale, z_epoch < epoch)
            elif model_config.npid_z_estimate == "step":  # every step's own estimate
                stale = tf.ones_like(stale)
            stored = tf.convert_to_tensor(log_z)
            loss, estimate, hit = npid_nce_loss(
                out["embedding"], view_ids, classifier.class_weights, noise,
                log_z=stored, estimate_now=stale,
                temperature=classifier.temperature,
                valid_classes=classifier.num_instances, proximal=model_config.npid_proximal)
            log_z.assign(keep_or_replace(stale, estimate, stored))
            z_epoch.assign(tf.cast(keep_or_replace(stale, tf.cast(epoch, tf.float32),
                                                   tf.cast(z_epoch, tf.float32)), tf.int64))
        else:  # full, or NPID's full non-parametric softmax (m = 0, bank not trained)
            weights = classifier.class_weights
            loss, hit = instance_classification_loss_and_accuracy(
                out["embedding"], view_ids, weights,
                temperature=classifier.temperature,
                hard_negatives=hard, smoothing=smoothing if hard is not None else 0.0,
                chunk_size=classifier.chunk_size, valid_classes=classifier.num_instances,
            )
        return tf.reduce_mean(loss), tf.reduce_mean(tf.cast(hit, tf.float32)), out["embedding"]

    if name == "npid" and model_config.npid_noise > 0:
        if npid_z is None or steps_per_epoch is None:
            raise ValueError("NPID with NCE needs npid_z (log Z and its epoch variables) "
                             "and steps_per_epoch")

    @tf.function
    def step(images, ids, global_step):
        hard_negatives = None
        if hard_table is not None and smoothing > 0:
            hard_negatives = classifier.lookup_rows(hard_table, ids)  # [b, K]
        before = [tf.identity(v.read_value()) for v in statistics]
        with tf.GradientTape() as tape:
            loss, accuracy, embedding = forward(images, ids, hard_negatives, global_step)
            scaled = loss if loss_scale is None else loss * loss_scale[0]
        grads = tape.gradient(scaled, handles)
        if loss_scale is not None:
            grads = [_unscale(g, loss_scale[0]) for g in grads]
        # The non-finite guard: one flag over the loss and every gradient. A False
        # flag leaves W, the backbone, the slots and the BN statistics as they were.
        loss_finite = tf.reduce_all(tf.math.is_finite(loss))
        finite = loss_finite
        for grad in grads:
            if grad is not None:
                values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
                finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(values)))
        lr = learning_rate_fn(global_step)
        optimizer.apply_gradients(zip(grads, handles), lr, apply=finite)
        for variable, value in zip(statistics, before):
            variable.assign(keep_or_replace(finite, variable, value))
        if name == "npid":
            # NPID's memory update with the mean of the two views' features; a
            # non-finite step leaves the bank as it was (momentum 1 = keep).
            d = embedding.shape[-1]
            features = tf.reduce_mean(tf.reshape(embedding, [-1, 2, d]), axis=1)
            features = masked(tf.math.l2_normalize(features, axis=-1), finite)
            keep = keep_or_replace(finite, tf.constant(model_config.npid_momentum),
                                   tf.constant(1.0))
            update_memory_bank(classifier.class_weights, ids, features, momentum=keep)
        global_step.assign_add(1)
        metrics = {"loss": loss, "instance_acc": accuracy, "lr": lr, "finite": finite}
        if loss_scale is not None:
            scale, good = loss_scale
            overflow = tf.logical_and(loss_finite, tf.logical_not(finite))
            grown = tf.logical_and(finite, good + 1 >= loss_scale_growth_steps)
            new_scale = tf.where(overflow, tf.maximum(scale / 2.0, 1.0),
                                 tf.where(grown, scale * 2.0, scale))
            metrics["finite"] = tf.logical_or(finite, tf.logical_and(overflow, scale > 1.0))
            metrics["loss_scale"] = tf.convert_to_tensor(scale)
            good.assign(tf.where(tf.logical_and(finite, tf.logical_not(grown)), good + 1,
                                 tf.zeros_like(good)))
            scale.assign(new_scale)
        return metrics

    return step


def _unscale(grad, scale):
    """A gradient of the scaled loss divided by the loss scale (dense or sparse)."""
    if grad is None:
        return None
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values / scale, grad.indices, grad.dense_shape)
    return grad / tf.cast(scale, grad.dtype)


def _draw(count: int, num_classes: int, seed: int, global_step) -> tf.Tensor:
    """``count`` uniform class ids for this step: a pure function of (seed, step), so a
    resumed run draws the same ones."""
    pair = tf.stack([tf.cast(seed, tf.int64) * 7919 + 17, tf.cast(global_step, tf.int64)])
    return tf.random.stateless_uniform([count], pair, 0, num_classes, dtype=tf.int32)

"""The pretraining step: one tf.function on the mesh.

Batch-sharded images (two views per instance), replicated backbone and head, W sharded
by rows. BatchNorm statistics are over the global batch, because DTensor reduces the
batch mean and variance across devices like any other reduction.
"""

from __future__ import annotations

import tensorflow as tf

from tf_instcls.methods import Batch, Method
from tf_instcls.parallel import layouts
from tf_instcls.parallel.layouts import keep_or_replace


def make_train_step(encoder, classifier, optimizer, learning_rate_fn, method: Method, *,
                    hard_table=None, loss_scale=None, loss_scale_growth_steps=2000):
    """Returns ``step(images, ids, global_step) -> metrics``.

    images: [b, V, S, S, 3] float (V = 1 or 2 views per instance), ids: [b] int32, both
    batch-sharded on the mesh. ``method`` (``methods.METHODS[name](...)``) gives the loss
    and what follows the update; the views of an instance share its one id. With
    ``hard_table`` (the miner's [N, K] table, laid out like W) each view gets its
    instance's hard negatives (Eq. 3 when the method smooths).
    ``loss_scale`` (float16 compute): the (scale, finite steps since a change) variables
    of dynamic loss scaling. The loss is multiplied by the scale before the gradient and
    the gradients divided by it; a step whose gradients overflow is skipped like any
    non-finite step and halves the scale (not below 1), ``loss_scale_growth_steps``
    finite steps double it. Such a skip is reported as finite (it is the scaling at
    work) unless the loss itself is not finite or the scale is already 1.
    """
    # Differentiate and update the storage (DVariables) behind the Keras variables.
    handles = [layouts.variable_handle(v) for v in encoder.trainable_variables]
    if method.trains_w:  # NPID's bank (in W's place) is updated by its memory rule
        handles += classifier.distributed_variables
    # BatchNorm's moving statistics change in the forward pass: kept aside so a
    # non-finite step can put them back.
    statistics = [layouts.variable_handle(v) for v in encoder.non_trainable_variables]

    def forward(images, ids, hard_negatives, global_step):
        count, size = images.shape[1], images.shape[2]
        views = tf.reshape(images, [-1, size, size, 3])  # [V b, ...]: views stay adjacent
        view_ids = tf.reshape(tf.stack([ids] * count, axis=1), [-1])  # [V b]
        hard = None
        if hard_negatives is not None:
            hard = tf.reshape(tf.stack([hard_negatives] * count, axis=1),
                              [-1, hard_negatives.shape[-1]])
        out = encoder(views, training=True)
        batch = Batch(out["embedding"], ids, view_ids, hard, global_step)
        loss, hit = method.loss(batch)
        return tf.reduce_mean(loss), tf.reduce_mean(tf.cast(hit, tf.float32)), batch

    @tf.function
    def step(images, ids, global_step):
        hard_negatives = None
        if hard_table is not None:  # the method mines: its loss reads them
            hard_negatives = classifier.lookup_rows(hard_table, ids)  # [b, K]
        before = [tf.identity(v.read_value()) for v in statistics]
        with tf.GradientTape() as tape:
            loss, accuracy, batch = forward(images, ids, hard_negatives, global_step)
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
        method.post_update(batch, finite)
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

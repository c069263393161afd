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
from tf_instcls.training.loss_scale import DynamicLossScale


def make_train_step(encoder, classifier, optimizer, learning_rate_fn, method: Method, *,
                    hard_table=None, loss_scale: DynamicLossScale | None = None):
    """Returns ``step(images, ids, global_step) -> metrics``: images [b, V, S, S, 3]
    (V = 1 or 2 views an instance, sharing its id), ids [b], both batch-sharded.
    ``method`` gives the loss and what follows the update; ``hard_table`` (the miner's
    [N, K], laid out like W) gives each view its instance's hard negatives;
    ``loss_scale``: float16 compute's dynamic loss scaling."""
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
                              [-1, hard_negatives.shape[-1]])  # [V b, K]
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
            scaled = loss if loss_scale is None else loss_scale.scale(loss)
        grads = tape.gradient(scaled, handles)
        if loss_scale is not None:
            grads = loss_scale.unscale(grads)
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
            metrics.update(loss_scale.update(loss_finite, finite))
        return metrics

    return step

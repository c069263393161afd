"""The pretraining step: one tf.function on the mesh.

Batch-sharded images (two views per instance), replicated backbone and head, W sharded
by rows. BatchNorm statistics are over the global batch, because DTensor reduces the
batch mean and variance across devices like any other reduction.
"""

from __future__ import annotations

import tensorflow as tf

from tf_instcls.losses import instance_classification_loss_and_accuracy
from tf_instcls.parallel import layouts
from tf_instcls.training.optimizer import keep_or_replace


def make_train_step(encoder, classifier, optimizer, learning_rate_fn, *, smoothing=0.0,
                    hard_table=None):
    """Returns ``step(images, ids, global_step) -> metrics``.

    images: [b, 2, S, S, 3] float (two views per instance), ids: [b] int32, both
    batch-sharded on the mesh. With ``hard_table`` (the miner's [N, K] table, laid out
    like W) and ``smoothing`` > 0 the loss is Eq. 3, else Eq. 1. The two views of an
    instance are classified against its one shared id.
    """
    # Differentiate and update the storage (DVariables) behind the Keras variables.
    handles = [layouts.variable_handle(v) for v in encoder.trainable_variables]
    handles += classifier.distributed_variables
    # BatchNorm's moving statistics change in the forward pass: kept aside so a
    # non-finite step can put them back.
    statistics = [layouts.variable_handle(v) for v in encoder.non_trainable_variables]

    def forward(images, ids, hard_negatives):
        size = images.shape[2]
        views = tf.reshape(images, [-1, size, size, 3])  # [2b, ...]: views stay adjacent
        view_ids = tf.reshape(tf.stack([ids, ids], axis=1), [-1])  # [2b]
        hard = None
        if hard_negatives is not None:
            hard = tf.reshape(tf.stack([hard_negatives] * 2, axis=1),
                              [-1, hard_negatives.shape[-1]])
        out = encoder(views, training=True)
        loss, hit = instance_classification_loss_and_accuracy(
            out["embedding"], view_ids, classifier.class_weights,
            temperature=classifier.temperature, hard_negatives=hard,
            smoothing=smoothing if hard is not None else 0.0,
            chunk_size=classifier.chunk_size, valid_classes=classifier.num_instances,
        )
        return tf.reduce_mean(loss), tf.reduce_mean(tf.cast(hit, tf.float32))

    @tf.function
    def step(images, ids, global_step):
        hard_negatives = None
        if hard_table is not None and smoothing > 0:
            hard_negatives = classifier.lookup_rows(hard_table, ids)  # [b, K]
        before = [tf.identity(v.read_value()) for v in statistics]
        with tf.GradientTape() as tape:
            loss, accuracy = forward(images, ids, hard_negatives)
        grads = tape.gradient(loss, handles)
        # The non-finite guard: one flag over the loss and every gradient. A False
        # flag leaves W, the backbone, the slots and the BN statistics as they were.
        finite = tf.reduce_all(tf.math.is_finite(loss))
        for grad in grads:
            if grad is not None:
                finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(grad)))
        lr = learning_rate_fn(global_step)
        optimizer.apply_gradients(zip(grads, handles), lr, apply=finite)
        for variable, value in zip(statistics, before):
            variable.assign(keep_or_replace(finite, variable, value))
        global_step.assign_add(1)
        return {"loss": loss, "instance_acc": accuracy, "lr": lr, "finite": finite}

    return step

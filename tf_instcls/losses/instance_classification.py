"""The cosine-softmax instance classification loss (Liu et al. 2021, Eq. 1-3).

For example b with embedding x_b, true class i = instance_ids[b] and hard negatives
H_b (K classes), with z_j = cos(w_j, x_b) / temperature:

    Eq. 1 (smoothing = 0):  J_b = -log( exp(z_i) / sum_j exp(z_j) )
    Eq. 3 (smoothing = a):  J_b = -log( sum_j y_j exp(z_j) / sum_j exp(z_j) )
                            y_i = 1 - a,  y_h = a / K for h in H_b  (Eq. 2)

The label weights sit **inside** the log, as Eq. 3 writes it. A class listed twice in
H_b, or the true class listed in H_b, gets the sum of its entries' weights (the label
distribution is built by adding a/K per entry), so the weights always sum to one.

Distributed computation (the paper's hybrid parallelism, on a DTensor mesh):
with W row-sharded over S devices the embeddings are gathered (replicated), every
device computes logits against its own rows only ([B, N/S]), and just the row maxima,
the exp-sums and the K+1 target logits per example are all-reduced. W is never
all-gathered and no device holds replicated [B, N] logits; the gradient of W stays
sharded and the embedding gradient is all-reduced. DTensor would silently all-gather W
(or the logits, for a gather/scatter over the sharded axis) unless the layouts are stated
at each boundary, so this module computes the target logits with a batched gather over a
[B, S, N/S] view and builds the sparse label matrix without any scatter: scatter ops on
sharded DTensors crash TF 2.21, and the gather gradient materialises replicated [B, N].
The label matrix Q[b, n] = sum_k q_bk [h_bk == n] is instead a batched matmul of two
one-hot factors over n = n1 * L2 + n2 (cost about 2 B (K+1) N / S flops).

Chunking (``chunk_size``): the forward pass is a ``tf.while_loop`` over chunks of c rows
(``parallel_iterations=1``) that keeps only [c]-sized results per row: loss, row shift,
exp-sum and the posterior over the K' targets. The backward pass is a second loop that
recomputes each chunk's logits from those and sums dW in place, so at its peak a device
holds two [c, N/S] buffers (exp(z), reused for the residual, and Q) and a few [N/S, D]
ones (normalised W, the dW sum, one chunk's dW), whatever B is. Control dependencies
cannot give this order: DTensor's MLIR passes drop them between stateless ops.
With ``reduction="mean"`` (what training uses) the upstream gradient is one scalar, so
each chunk's gradient is taken in the forward loop itself: one pass, no recomputed
logits; on one device the label term stays sparse there too (one [c, N] buffer).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_instcls import defaults
from tf_instcls.losses.chunked_softmax import ChunkedCosineSoftmax
from tf_instcls.losses.chunks import ChunkGrid
from tf_instcls.losses.cosine_softmax import CosineSoftmax, LossSpec, l2_normalize_rows
from tf_instcls.losses.fused_mean_softmax import FusedMeanCosineSoftmax
from tf_instcls.parallel import layouts


def instance_classification_loss(
    embeddings,
    instance_ids,
    class_weights,
    *,
    temperature: float = defaults.TEMPERATURE,
    hard_negatives=None,
    smoothing: float = 0.0,
    chunk_size: int | None = None,
    valid_classes: int | None = None,
    reduction: str = "none",
):
    """Per-example cosine-softmax instance classification loss, [B] float32.

    Args:
      embeddings: [B, D] float embeddings x (normalised inside).
      instance_ids: [B] int, the true class (instance id) of each example.
      class_weights: [N, D] classifier weights W: a tensor/variable, or (inside a
        tf.function) a ``dtensor.DVariable`` row-sharded or replicated on a 1-D mesh.
      temperature: tau of the cosine softmax.
      hard_negatives: [B, K] int, the K hardest negative classes of each example
        (Eq. 2), or None. Ignored when ``smoothing`` is 0.
      smoothing: alpha of Eq. 2-3, in [0, 1). 0 gives Eq. 1.
      chunk_size: process the batch in chunks of this many rows so that no device
        holds more than about chunk_size x N / T logits; the backward pass recomputes
        the logits chunk by chunk. Same values and gradients as unchunked.
      valid_classes: rows at or beyond this index are padding (DTensor needs N
        divisible by the shard count): excluded from every softmax, zero gradient.
      reduction: "none" (the [B] losses) or "mean" (their mean, a scalar). With
        ``chunk_size``, "mean" takes each chunk's gradient in the same pass as its loss
        (the upstream gradient of a mean is the same for every row), so the logits are
        not recomputed; and on one device (W whole, the batch in one piece) a chunk
        holds a single [c, N] buffer instead of two.

    Returns:
      [B] float32 loss per example (a scalar with ``reduction="mean"``). On a mesh it is
      a DTensor: replicated when W is row-sharded, batch-sharded when W is replicated.
    """
    return _instance_classification(
        embeddings, instance_ids, class_weights, temperature, hard_negatives, smoothing,
        chunk_size, valid_classes, reduction, with_accuracy=False,
    )


def instance_classification_loss_and_accuracy(
    embeddings,
    instance_ids,
    class_weights,
    *,
    temperature: float = defaults.TEMPERATURE,
    hard_negatives=None,
    smoothing: float = 0.0,
    chunk_size: int | None = None,
    valid_classes: int | None = None,
    reduction: str = "none",
):
    """Like :func:`instance_classification_loss`, plus a bool [B]: does the argmax of
    the logits (over the valid classes) equal the instance id? (Costs one reduce-max.)"""
    loss, hit = _instance_classification(
        embeddings, instance_ids, class_weights, temperature, hard_negatives, smoothing,
        chunk_size, valid_classes, reduction, with_accuracy=True,
    )
    return loss, tf.stop_gradient(hit) > 0.5


def _instance_classification(
    embeddings, instance_ids, class_weights, temperature, hard_negatives, smoothing,
    chunk_size, valid_classes, reduction, *, with_accuracy,
):
    spec = _validate(
        embeddings, instance_ids, class_weights, temperature, hard_negatives,
        smoothing, chunk_size, valid_classes, reduction,
    )
    placement = layouts.class_weight_placement(class_weights)
    x = tf.cast(embeddings, tf.float32)
    ids = tf.cast(instance_ids, tf.int32)
    if spec.use_hard:
        targets = tf.concat([tf.expand_dims(ids, 1), tf.cast(hard_negatives, tf.int32)], axis=1)
    else:
        targets = tf.expand_dims(ids, 1)  # [B, K'] with K' = K + 1 or 1
    batch_shards = 1
    gate = 0.0
    if placement.distributed and placement.mesh.size > 1:
        mesh = placement.mesh
        targets = layouts.relayout(targets, layouts.replicated_layout(mesh, 2))
        # gate = 0.0 once the check passed: x's all-gathers below wait for it.
        targets, gate = _check_targets_on_mesh(targets, spec.valid, spec.use_hard, mesh)
    else:
        targets = _check_targets(targets, spec.valid, spec.use_hard)
    if placement.distributed:
        mesh = placement.mesh
        if placement.sharded:
            # DHP step 2: gather the features of every device.
            x = layouts.relayout(x + gate, layouts.replicated_layout(mesh, 2))
            targets = layouts.relayout(targets, layouts.replicated_layout(mesh, 2))
        elif mesh.size > 1 and spec.batch % mesh.size == 0:
            # DDP: each device classifies its own slice of the batch against all of W.
            batch_shards = mesh.size
            x = layouts.relayout(x, layouts.batch_layout(mesh, 2))
            targets = layouts.relayout(targets, layouts.batch_layout(mesh, 2))
        else:
            # One device, or a batch that does not split: every device does all of it.
            x = layouts.relayout(x + gate, layouts.replicated_layout(mesh, 2))

    core = build_cosine_softmax(spec, placement, batch_shards, targets, with_accuracy)
    return core(l2_normalize_rows(x), tf.convert_to_tensor(class_weights))


def build_cosine_softmax(spec: LossSpec, placement, batch_shards: int, targets,
                         with_accuracy: bool = False) -> CosineSoftmax:
    """The batch in one piece (``CosineSoftmax``), in chunks with a second loop for the
    gradient (``ChunkedCosineSoftmax``), or, for the mean, in chunks in one pass
    (``FusedMeanCosineSoftmax``)."""
    chunks = ChunkGrid(placement, batch_shards, spec.batch, spec.chunk).num_chunks
    kind = (CosineSoftmax if chunks == 1 else
            FusedMeanCosineSoftmax if spec.mean else ChunkedCosineSoftmax)
    return kind(spec, placement, batch_shards, targets, with_accuracy)


def _validate(embeddings, ids, weights, temperature, hard, smoothing, chunk, valid,
              reduction="none"):
    def shape_of(value, name, rank):
        shape = tf.TensorShape(value.shape)
        if shape.rank != rank:
            raise ValueError(f"{name} must have rank {rank}; got shape {shape}")
        return shape

    dtype = tf.as_dtype(embeddings.dtype)
    if not dtype.is_floating:
        raise TypeError(f"embeddings must be floating point; got {dtype.name}")
    if not tf.as_dtype(weights.dtype).is_floating:
        raise TypeError(f"class_weights must be floating point; got {weights.dtype}")
    if not tf.as_dtype(ids.dtype).is_integer:
        raise TypeError(f"instance_ids must be integers; got {tf.as_dtype(ids.dtype).name}")
    e_shape = shape_of(embeddings, "embeddings", 2)
    w_shape = shape_of(weights, "class_weights", 2)
    i_shape = shape_of(ids, "instance_ids", 1)
    batch, dim = e_shape
    num_classes, w_dim = w_shape
    if None in (batch, dim, num_classes, w_dim) or i_shape[0] is None:
        raise ValueError("instance_classification_loss needs static shapes")
    if dim != w_dim:
        raise ValueError(f"embeddings dim {dim} != class_weights dim {w_dim}")
    if i_shape[0] != batch:
        raise ValueError(f"instance_ids has {i_shape[0]} entries for a batch of {batch}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number; got {temperature!r}")
    if not (isinstance(smoothing, (int, float)) and 0.0 <= smoothing < 1.0):
        raise ValueError(f"smoothing must be in [0, 1); got {smoothing!r}")
    num_hard = 0
    if hard is not None:
        if not tf.as_dtype(hard.dtype).is_integer:
            raise TypeError(f"hard_negatives must be integers; got {hard.dtype}")
        h_shape = shape_of(hard, "hard_negatives", 2)
        if h_shape[0] != batch:
            raise ValueError(f"hard_negatives has {h_shape[0]} rows for a batch of {batch}")
        num_hard = h_shape[1]
    if smoothing > 0 and num_hard == 0:
        raise ValueError(
            "smoothing > 0 needs hard_negatives with K >= 1 columns (Eq. 2 spreads "
            "alpha over the K hardest negatives); pass smoothing=0 to disable"
        )
    if chunk is not None and (not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk!r}")
    if valid is None:
        valid = num_classes
    if not (isinstance(valid, (int, np.integer)) and 1 <= valid <= num_classes):
        raise ValueError(f"valid_classes must be in [1, {num_classes}]; got {valid!r}")
    if reduction not in ("none", "mean"):
        raise ValueError(f"reduction must be 'none' or 'mean'; got {reduction!r}")
    use_hard = smoothing > 0
    label_weights = [1.0] if not use_hard else [1.0 - smoothing] + [smoothing / num_hard] * num_hard
    return LossSpec(
        batch=batch, dim=dim, num_classes=num_classes, valid=int(valid),
        inv_temperature=1.0 / float(temperature), use_hard=use_hard,
        label_weights=tuple(label_weights), chunk=chunk, mean=reduction == "mean",
    )


def _target_messages(valid, use_hard):
    what = "instance_ids / hard_negatives" if use_hard else "instance_ids"
    return (f"{what} must be >= 0",
            f"{what} must be < the number of (valid) classes {valid}")


def _check_targets_on_mesh(targets, valid, use_hard, mesh):
    """(targets, 0.0) on a mesh of several devices: fails with a clear message when an
    id or hard negative (replicated ``targets``) is outside [0, valid).

    Only the first device fails, and every later collective of the loss waits for the
    check through the returned zero (DTensor drops control edges; this is data). When
    every device failed its own assertion, a device still finishing the targets'
    all-gather could be cancelled by another's failure first, and the error raised was
    that CancelledError instead of this message.
    """
    from tensorflow.experimental import dtensor

    first = tf.equal(dtensor.relayout(tf.range(mesh.size), layouts.batch_layout(mesh, 1)), 0)
    gate = tf.constant(0.0)
    bad = (tf.reduce_any(targets < 0), tf.reduce_any(targets >= valid))
    for flag, message in zip(bad, _target_messages(valid, use_hard)):
        poison = tf.where(tf.logical_and(first, flag), float("nan"), 0.0)  # [T], sharded
        gate = gate + tf.reduce_sum(tf.debugging.check_numerics(poison, message))
    return targets + tf.cast(gate, tf.int32), gate


def _check_targets(targets, valid, use_hard):
    """Fails with a clear message when an id or hard negative is outside [0, valid)."""
    low, high = _target_messages(valid, use_hard)
    checks = [
        tf.debugging.assert_non_negative(targets, message=low),
        tf.debugging.assert_less(targets, tf.constant(valid, tf.int32), message=high),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(targets)

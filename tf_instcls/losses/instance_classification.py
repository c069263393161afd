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
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tf_instcls.parallel import layouts

_NORM_EPS = 1e-12  # floor on the squared norm, as tf.math.l2_normalize
_NEG = -1e30  # logit given to padded classes before the max


def instance_classification_loss(
    embeddings,
    instance_ids,
    class_weights,
    *,
    temperature: float = 0.15,
    hard_negatives=None,
    smoothing: float = 0.0,
    chunk_size: int | None = None,
    valid_classes: int | None = None,
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

    Returns:
      [B] float32 loss per example. On a mesh it is a DTensor: replicated when W is
      row-sharded, batch-sharded when W is replicated.
    """
    return _instance_classification(
        embeddings, instance_ids, class_weights, temperature, hard_negatives, smoothing,
        chunk_size, valid_classes, with_accuracy=False,
    )


def instance_classification_loss_and_accuracy(
    embeddings,
    instance_ids,
    class_weights,
    *,
    temperature: float = 0.15,
    hard_negatives=None,
    smoothing: float = 0.0,
    chunk_size: int | None = None,
    valid_classes: int | None = None,
):
    """Like :func:`instance_classification_loss`, plus a bool [B]: does the argmax of
    the logits (over the valid classes) equal the instance id? (Costs one reduce-max.)"""
    loss, hit = _instance_classification(
        embeddings, instance_ids, class_weights, temperature, hard_negatives, smoothing,
        chunk_size, valid_classes, with_accuracy=True,
    )
    return loss, tf.stop_gradient(hit) > 0.5


def _instance_classification(
    embeddings, instance_ids, class_weights, temperature, hard_negatives, smoothing,
    chunk_size, valid_classes, *, with_accuracy,
):
    cfg = _validate(
        embeddings, instance_ids, class_weights, temperature, hard_negatives,
        smoothing, chunk_size, valid_classes,
    )
    placement = layouts.class_weight_placement(class_weights)
    x = tf.cast(embeddings, tf.float32)
    ids = tf.cast(instance_ids, tf.int32)
    if cfg["use_hard"]:
        targets = tf.concat([tf.expand_dims(ids, 1), tf.cast(hard_negatives, tf.int32)], axis=1)
    else:
        targets = tf.expand_dims(ids, 1)  # [B, K'] with K' = K + 1 or 1
    batch_shards = 1
    if placement.distributed:
        mesh = placement.mesh
        # Every device checks every id, so all of them fail the same assertion instead of
        # one failing and the others reporting a cancelled collective.
        targets = layouts.relayout(targets, layouts.replicated_layout(mesh, 2))
    targets = _check_targets(targets, cfg["valid"], cfg["use_hard"])
    if placement.distributed:
        if placement.sharded:
            # DHP step 2: gather the features of every device.
            x = layouts.relayout(x, layouts.replicated_layout(mesh, 2))
            targets = layouts.relayout(targets, layouts.replicated_layout(mesh, 2))
        elif mesh.size > 1 and cfg["batch"] % mesh.size == 0:
            # DDP: each device classifies its own slice of the batch against all of W.
            batch_shards = mesh.size
            x = layouts.relayout(x, layouts.batch_layout(mesh, 2))
            targets = layouts.relayout(targets, layouts.batch_layout(mesh, 2))
        else:
            # One device, or a batch that does not split: every device does all of it.
            x = layouts.relayout(x, layouts.replicated_layout(mesh, 2))

    core = _CosineSoftmax(cfg, placement, batch_shards, targets, with_accuracy)
    x_unit = _l2_normalize(x)
    w_unit = _l2_normalize(tf.convert_to_tensor(class_weights), core.local_rows_mask())
    return core(x_unit, w_unit)


def _validate(embeddings, ids, weights, temperature, hard, smoothing, chunk, valid):
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
    use_hard = smoothing > 0
    label_weights = [1.0] if not use_hard else [1.0 - smoothing] + [smoothing / num_hard] * num_hard
    return dict(
        batch=batch, dim=dim, num_classes=num_classes, valid=int(valid),
        inv_temperature=1.0 / float(temperature), use_hard=use_hard,
        label_weights=label_weights, chunk=chunk,
    )


def _check_targets(targets, valid, use_hard):
    """Fails with a clear message when an id or hard negative is outside [0, valid)."""
    what = "instance_ids / hard_negatives" if use_hard else "instance_ids"
    checks = [
        tf.debugging.assert_non_negative(targets, message=f"{what} must be >= 0"),
        tf.debugging.assert_less(
            targets, tf.constant(valid, tf.int32),
            message=f"{what} must be < the number of (valid) classes {valid}",
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(targets)


def _l2_normalize(value, row_mask=None):
    square = tf.reduce_sum(tf.square(value), axis=-1, keepdims=True)
    factor = tf.math.rsqrt(tf.maximum(square, _NORM_EPS))
    return value * (factor if row_mask is None else factor * row_mask)


class _CosineSoftmax:
    """Loss and analytic gradient of the cosine softmax on unit vectors.

    Works on a [P, B/P] view of the batch (P = batch shards: the mesh size for DDP,
    else 1) and a [c, S, L] view of the logits (S = row shards of W, L = N / S), so
    every op stays local except the all-reduces of the design.
    """

    def __init__(self, cfg, placement, batch_shards, targets, with_accuracy=False):
        self.cfg = cfg
        self.with_accuracy = with_accuracy
        self.placement = placement
        self.batch_shards = batch_shards
        self.targets = targets
        n, s = cfg["num_classes"], placement.row_shards
        if n % s:
            raise ValueError(
                f"class_weights has {n} rows, not divisible by its {s} row shards: pad W "
                "to a multiple of the shard count and pass valid_classes (InstanceClassifier "
                "does this)"
            )
        self.local_rows = n // s
        self.factor2 = int(math.ceil(math.sqrt(self.local_rows)))
        self.factor1 = int(math.ceil(self.local_rows / self.factor2))
        per_shard = cfg["batch"] // batch_shards
        chunk = cfg["chunk"]
        if chunk is None:
            self.chunk = per_shard
        else:
            self.chunk = max(1, min(per_shard, chunk // batch_shards))
        self.num_chunks = -(-per_shard // self.chunk)
        # Below tau = 0.05, exp(z) could overflow or underflow: shift by the (all-reduced) row max.
        self.fixed_shift = cfg["inv_temperature"] <= 20.0
        self.num_padding = cfg["num_classes"] - cfg["valid"]
        self.log_label_weights = tf.constant(np.log(cfg["label_weights"]), tf.float32)

    # -- layout helpers -------------------------------------------------------------
    def _pin(self, value):
        """States the [c, N] logits layout: columns sharded (DHP), batch (DDP) or replicated."""
        if not self.placement.distributed:
            return value
        mesh = self.placement.mesh
        if self.placement.sharded:
            layout = layouts.columns_sharded_layout(mesh, 2)
        elif self.batch_shards > 1:
            layout = layouts.batch_layout(mesh, 2)
        else:
            layout = layouts.replicated_layout(mesh, 2)
        return layouts.relayout(value, layout)

    # -- the math -------------------------------------------------------------------
    def local_rows_mask(self):
        """[N, 1] float, 1 on W's real rows and 0 on padding, built from each device's
        own row range; None unless W's rows are split over devices.

        Multiplied into W's [N, 1] inverse norms (exact: the factor is 1), it gives the
        normalised W its local shape in each device's graph. A DTensor variable read
        keeps W's global [N, D] shape for grappler's static shape inference, and its cost
        estimator then logs "Incompatible Matrix dimensions" at ERROR level, once per
        device, for the backward matmul of the local [c, N/S] residual by W (only when
        S divides N: the padded path already masks W). Costs [N/S, 1] ops a step.
        """
        if self.placement.row_shards == 1:
            return None
        cols = tf.expand_dims(layouts.shard_index(self.placement), 1) * self.local_rows
        cols = cols + tf.expand_dims(tf.range(self.local_rows), 0)  # [S, L]
        return tf.cast(tf.reshape(cols < self.cfg["valid"], [-1, 1]), tf.float32)

    def _column_masks(self, shard_ids):
        """valid [1, S, L] bool (None when no padding)."""
        if self.cfg["valid"] == self.cfg["num_classes"]:
            return None
        cols = tf.expand_dims(shard_ids, 1) * self.local_rows + tf.expand_dims(
            tf.range(self.local_rows), 0
        )
        return tf.expand_dims(cols < self.cfg["valid"], 0)

    def _logits(self, x_chunk, w_unit, row_scale=None):
        """z [c, S, L]: the chunk's cosine logits against the local rows of W."""
        inv_t = self.cfg["inv_temperature"]
        scale = inv_t if row_scale is None else tf.expand_dims(row_scale * inv_t, 1)
        # 1/tau is folded into the [c, D] side: one pass fewer over the [c, N] logits.
        logits = self._pin(tf.matmul(x_chunk * scale, w_unit, transpose_b=True))  # [c, N]
        return tf.reshape(logits, [-1, self.placement.row_shards, self.local_rows])

    def _target_positions(self, t_chunk, shard_ids):
        """own [c, S, K'] (does shard s hold target k?) and local [c, K'] (its row there)."""
        rows = self.local_rows
        owner = t_chunk // rows
        local = t_chunk - owner * rows  # [c, K']
        own = tf.equal(tf.expand_dims(owner, 1), tf.reshape(shard_ids, [1, -1, 1]))  # [c, S, K']
        return own, local

    def _exp(self, z, valid, shift):
        if self.fixed_shift:
            # Cosine logits lie in [-1/tau, 1/tau]; for tau >= 0.05 exp(z) is within
            # [e^-20, e^20], so no shift is needed: no max pass and no max all-reduce.
            # (A scalar shift costs a full broadcast pass over [c, N] on CPU.)
            # Padded rows were zeroed in W, so each adds exactly exp(0) = 1 to the sum.
            return tf.exp(z)
        masked = z if valid is None else tf.where(valid, z, _NEG)
        expo = tf.exp(masked - shift)  # shift: the all-reduced row max
        return expo if valid is None else tf.where(valid, expo, 0.0)

    def _forward_chunk(self, x_chunk, t_chunk, w_unit, shard_ids, valid):
        """Loss [c] (with the hit flags when ``with_accuracy``), what the backward pass
        needs (exp-logits [c, S, L] and more) and what a recomputing backward pass
        keeps per row: ``(shift, denom, posterior)``, [c, 1, 1], [c, 1, 1], [c, K']."""
        z = self._logits(x_chunk, w_unit)
        own, local = self._target_positions(t_chunk, shard_ids)
        index = tf.broadcast_to(tf.expand_dims(local, 1), tf.shape(own))
        picked = tf.gather(z, index, batch_dims=2, axis=2)  # [c, S, K'], local
        target_logits = tf.reduce_sum(tf.where(own, picked, 0.0), axis=1)  # [c, K'], all-reduce
        # Pick the targets first: exp() can then reuse the logits' buffer (one [c, N] less).
        # This holds on plain tensors; under DTensor the control edge is dropped (see the
        # module docstring), which costs the forward pass of a chunk that buffer.
        with tf.control_dependencies([target_logits]):
            z = tf.identity(z)
        if self.fixed_shift:
            shift = tf.zeros_like(target_logits[:, :1, None])
        else:
            masked = z if valid is None else tf.where(valid, z, _NEG)
            shift = tf.stop_gradient(tf.reduce_max(masked, axis=[1, 2], keepdims=True))
        expo = self._exp(z, valid, shift)
        denom = tf.reduce_sum(expo, axis=[1, 2], keepdims=True)  # [c, 1, 1], all-reduce
        if self.fixed_shift and self.num_padding:
            denom = denom - float(self.num_padding)
        weighted = target_logits + tf.expand_dims(self.log_label_weights, 0)
        log_num = tf.reduce_logsumexp(weighted, axis=1)
        loss = tf.reshape(shift + tf.math.log(denom), [-1]) - log_num
        posterior = tf.nn.softmax(weighted, axis=1)  # q over the K' targets, [c, K']
        if self.with_accuracy:
            if self.fixed_shift:  # no row max was needed for the softmax: take it now
                masked = z if valid is None else tf.where(valid, z, _NEG)
                best = tf.reduce_max(masked, axis=[1, 2])  # [c], all-reduce
            else:  # the shift already is the (masked, all-reduced) row max
                best = tf.reshape(shift, [-1])
            # float, not bool: custom_gradient outputs must be differentiable dtypes.
            loss = (loss, tf.cast(target_logits[:, 0] >= best, tf.float32))
        return loss, (expo, 1.0 / denom, posterior, own, local), (shift, denom, posterior)

    def _recompute_chunk(self, x_chunk, t_chunk, w_unit, shard_ids, valid, saved):
        """The backward pass's parts for one chunk, from what its forward pass saved (row
        shift, exp-sum and target posterior, all [c]-sized).

        Only the logits are recomputed: no target gather, no exp-sum (one [c, N] pass
        and one all-reduce fewer), and exp() is the logits' only consumer, so it can
        reuse their buffer. The logits are scaled by sign(exp-sum), which is 1 (NaN only
        where that row's loss already is NaN): it makes the chunk's first matmul depend
        on the forward pass's result, so the backward pass cannot start, and hold a
        [c, N] buffer, while the forward loop still runs.
        """
        shift, denom, posterior = saved
        z = self._logits(x_chunk, w_unit, row_scale=tf.sign(tf.reshape(denom, [-1])))
        own, local = self._target_positions(t_chunk, shard_ids)
        return self._exp(z, valid, shift), 1.0 / denom, posterior, own, local

    def _label_matrix(self, posterior, own, local):
        """Q [c, S, L] with Q[b, s, l] = sum_k q_bk [target_bk == s * L + l], no scatter."""
        weights = tf.where(own, tf.expand_dims(posterior, 1), 0.0)  # [c, S, K']
        # (A plain one_hot [c, 1, L] times the weights, for K' = 1, held ~2x more memory.)
        f1, f2 = self.factor1, self.factor2
        # (expand_dims + broadcasting matmul: einsum and None-slicing crash DTensor here.)
        first = tf.transpose(tf.one_hot(local // f2, f1), [0, 2, 1])  # [c, L1, K']
        left = tf.expand_dims(weights, 2) * tf.expand_dims(first, 1)  # [c, S, L1, K']
        right = tf.expand_dims(tf.one_hot(local % f2, f2), 1)  # [c, 1, K', L2]
        q = tf.matmul(left, right)  # [c, S, L1, L2]
        q = tf.reshape(q, [-1, self.placement.row_shards, f1 * f2])
        if f1 * f2 == self.local_rows:
            return q
        return tf.slice(q, [0, 0, 0], [-1, -1, self.local_rows])

    def _chunk_gradient(self, parts, upstream, x_chunk, w_unit):
        """dJ/dz = row_b * (exp(z) - denom_b Q), row_b = upstream_b / (denom_b tau).

        The per-row factor is applied to the small [c, D] sides of the two matmuls, so
        the [c, N] residual costs one pass fewer than (softmax - Q) * scale.
        """
        expo, inv_denom, posterior, own, local = parts
        row = tf.reshape(inv_denom, [-1]) * upstream * self.cfg["inv_temperature"]  # [c]
        label = self._label_matrix(posterior / tf.reshape(inv_denom, [-1, 1]), own, local)
        residual = self._pin(tf.reshape(expo - label, [-1, self.cfg["num_classes"]]))  # [c, N]
        row = tf.expand_dims(row, 1)
        grad_x = tf.matmul(residual, w_unit) * row  # [c, D], all-reduced over shards
        # x^T G ([D, N]; the caller transposes once), not G^T x: TF's transpose_a matmul
        # of a wide G was 2x slower on CPU.
        grad_w_t = tf.matmul(x_chunk * row, residual, transpose_a=True)  # [D, N]
        return grad_x, grad_w_t

    def __call__(self, x_unit, w_unit):
        shard_ids = layouts.shard_index(self.placement)
        valid = self._column_masks(shard_ids)
        row_mask = None
        if self.fixed_shift and valid is not None:
            # Zero the padded rows of W (a cheap [N, 1] op) instead of masking [c, N].
            row_mask = tf.cast(tf.reshape(valid, [-1, 1]), tf.float32)  # [N, 1]
        chunked = self.num_chunks > 1

        @tf.custom_gradient
        def cosine_softmax(x_unit, w_input):
            w_unit = w_input if row_mask is None else w_input * row_mask
            if chunked:
                grids = (self._grid(x_unit), self._grid(self.targets))  # both passes use them
                outputs, saved = self._chunked_forward(grids, w_unit, shard_ids, valid)
            else:
                outputs, parts, _ = self._forward_chunk(
                    x_unit, self.targets, w_unit, shard_ids, valid
                )

            def grad(upstream, *unused_hit_grad):
                if chunked:
                    grad_x, grad_w = self._chunked_backward(
                        upstream, saved, grids, w_unit, shard_ids, valid
                    )
                else:
                    grad_x, grad_w_t = self._chunk_gradient(parts, upstream, x_unit, w_unit)
                    grad_w = tf.transpose(grad_w_t)
                if row_mask is not None:
                    grad_w = grad_w * row_mask  # padded rows: zero gradient
                return grad_x, grad_w

            return outputs, grad

        return cosine_softmax(x_unit, w_unit)

    # -- chunks: one tf.while_loop for the forward pass, one for the backward ----------
    # The chunks run in a loop with parallel_iterations=1, so exactly one chunk's
    # buffers are alive at a time. (An unrolled Python loop serialised with control
    # dependencies is not enough: DTensor's MLIR passes drop control edges between
    # stateless ops, and the executor then ran several chunks, and the forward and the
    # backward pass, at once: 2.0 x less memory than unchunked instead of 4 x.)
    def _grid(self, value, fill=0):
        """[B, ...] -> [P, n, c, ...]: each device's rows, padded to n chunks of c."""
        p, n, c = self.batch_shards, self.num_chunks, self.chunk
        tail = list(value.shape[1:])
        # Every intermediate is pinned: DTensor's layout propagation otherwise shards the
        # padded [P, n * c] axis, which need not divide the mesh.
        grid = self._pin_grid(tf.reshape(value, [p, -1, *tail]))
        pad = n * c - grid.shape[1]
        if pad:
            grid = self._pin_grid(tf.pad(grid, [[0, 0], [0, pad]] + [[0, 0]] * len(tail),
                                         constant_values=tf.cast(fill, value.dtype)))
        return self._pin_grid(tf.reshape(grid, [p, n, c, *tail]))

    def _ungrid(self, grid):
        """Inverse of :meth:`_grid`: [P, n, c, ...] -> [B, ...] (padding dropped)."""
        p, tail = self.batch_shards, list(grid.shape[3:])
        rows = self.cfg["batch"] // p
        flat = self._pin_grid(tf.reshape(grid, [p, -1, *tail]))
        if flat.shape[1] != rows:
            flat = self._pin_grid(
                tf.slice(flat, [0, 0] + [0] * len(tail), [p, rows] + [-1] * len(tail))
            )
        return tf.reshape(flat, [self.cfg["batch"], *tail])

    def _pin_grid(self, grid):
        """Grids are split over devices by their first axis for DDP, else replicated."""
        if not self.placement.distributed:
            return grid
        mesh, rank = self.placement.mesh, grid.shape.rank
        if self.batch_shards > 1:
            return layouts.relayout(grid, layouts.batch_layout(mesh, rank))
        return layouts.relayout(grid, layouts.replicated_layout(mesh, rank))

    def _pin_columns(self, value):
        """The [D, N] dW accumulator: N sharded like W's rows (DHP), else replicated."""
        if not self.placement.distributed:
            return value
        mesh = self.placement.mesh
        if self.placement.sharded:
            return layouts.relayout(value, layouts.columns_sharded_layout(mesh, 2))
        return layouts.relayout(value, layouts.replicated_layout(mesh, 2))

    def _take(self, grid, i):
        """Chunk i of a grid as [P * c, ...]."""
        part = tf.gather(grid, i, axis=1)  # [P, c, ...]
        return tf.reshape(part, [-1, *grid.shape[3:]])

    def _put(self, grid, i, value):
        """The grid with chunk i replaced by ``value`` ([P * c, ...])."""
        p, n, c = self.batch_shards, self.num_chunks, self.chunk
        tail = list(grid.shape[3:])
        value = tf.reshape(value, [p, 1, c, *tail])
        here = tf.reshape(tf.equal(tf.range(n), i), [1, n, 1] + [1] * len(tail))
        return self._pin_grid(tf.where(here, value, grid))

    def _loop(self, body, loop_vars):
        n = self.num_chunks
        return tf.while_loop(
            lambda i, *_: i < n, body, [tf.constant(0), *loop_vars],
            parallel_iterations=1, maximum_iterations=n,
        )[1:]

    def _chunked_forward(self, grids, w_unit, shard_ids, valid):
        x_grid, t_grid = grids  # [P, n, c, D], [P, n, c, K']
        p, n, c, k = self.batch_shards, self.num_chunks, self.chunk, self.targets.shape[1]
        rows = self._pin_grid(tf.zeros([p, n, c]))
        outputs = [rows, rows] if self.with_accuracy else [rows]  # loss [, hit]
        saved = [rows, rows, self._pin_grid(tf.zeros([p, n, c, k]))]  # shift, denom, posterior

        def body(i, *grids):
            out, _, (shift, denom, posterior) = self._forward_chunk(
                self._take(x_grid, i), self._take(t_grid, i), w_unit, shard_ids, valid
            )
            values = list(out) if self.with_accuracy else [out]
            values += [tf.reshape(shift, [-1]), tf.reshape(denom, [-1]), posterior]
            return [i + 1] + [self._put(g, i, v) for g, v in zip(grids, values)]

        grids = self._loop(body, outputs + saved)
        outputs = [self._ungrid(g) for g in grids[: len(outputs)]]
        saved = grids[len(outputs):]  # [P, n, c] / [P, n, c, K'] for every row
        return (tuple(outputs) if self.with_accuracy else outputs[0]), saved

    def _chunked_backward(self, upstream, saved, grids, w_unit, shard_ids, valid):
        x_grid, t_grid = grids
        # Padded rows get a zero upstream gradient, so they add nothing to dW.
        g_grid = self._grid(upstream)

        def body(i, grad_x_grid, grad_w_t):
            x_chunk = self._take(x_grid, i)
            shift, denom, posterior = (self._take(g, i) for g in saved)
            parts = self._recompute_chunk(
                x_chunk, self._take(t_grid, i), w_unit, shard_ids, valid,
                (tf.reshape(shift, [-1, 1, 1]), tf.reshape(denom, [-1, 1, 1]), posterior),
            )
            g_x, g_w_t = self._chunk_gradient(parts, self._take(g_grid, i), x_chunk, w_unit)
            # dW is summed as [D, N] (the matmul's own output) and transposed once.
            return i + 1, self._put(grad_x_grid, i, g_x), self._pin_columns(grad_w_t + g_w_t)

        # The sums start at a zero that depends on the forward pass's result: a plain
        # tf.zeros([D, N]) is folded by DTensor's MLIR passes into a constant that the
        # function then keeps alive for good (one more [N, D] buffer per device).
        zero = tf.math.multiply_no_nan(tf.reduce_sum(saved[1][:1, :1, :1]), 0.0)
        dim, num = self.cfg["dim"], self.cfg["num_classes"]
        grad_x_grid, grad_w_t = self._loop(body, [
            self._pin_grid(tf.broadcast_to(zero, x_grid.shape)),
            self._pin_columns(tf.broadcast_to(zero, [dim, num])),
        ])
        return self._ungrid(grad_x_grid), tf.transpose(grad_w_t)

"""The paper's comparisons, on the same sharded W / memory bank as the main loss:

- sampled instance classification (paper Table 3): the cosine softmax restricted to the
  batch's own classes plus S uniformly sampled classes;
- NPID (Wu et al. 2018): NCE against a non-parametric memory bank V [N, D] with m
  uniformly drawn noise samples and a normalising constant Z estimated once, and the
  exact memory update v <- normalise(mu v + (1 - mu) f).

Both work on a row-sharded (or replicated) W / V inside a tf.function. Logits are
[B, N] with N sharded like W (each device holds B x N/T), and class membership is
found by comparing ids with a row-index vector laid out like W's rows. So nothing is
gathered or scattered over the sharded axis (DTensor all-gathers sharded gathers and
cannot scatter), and plain autodiff gives exact gradients: zero on every row of W
outside the sampled set.

Cost: the [B, N/T] logits are the same as the full softmax's. These baselines
reproduce the paper's accuracy comparisons; they are not a fast sampled
implementation. In NCE the m noise samples are drawn once per step and shared by the
batch's examples (each example sees m uniform noise samples, as NPID).
"""

from __future__ import annotations

import math

import tensorflow as tf

from tf_instcls import defaults
from tf_instcls.parallel import layouts

_EPS = 1e-12


def _unit(value):
    return value * tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(value), -1, keepdims=True),
                                            _EPS))


class _Rows:
    """Row-index vector and logits pinned to W's row layout."""

    def __init__(self, weights):
        self.placement = layouts.class_weight_placement(weights)
        self.num_rows = int(weights.shape[0])

    def replicate(self, value):
        return layouts.pin_batch(value, self.placement, batch_shards=1)  # replicated

    def columns(self, value):
        """[B, N] pinned to columns sharded like W's rows (replicated for DDP W)."""
        return layouts.pin_columns(value, self.placement)

    def index(self):
        """int32 [N] 0..N-1, each device holding its own rows' indices."""
        return layouts.row_index(self.placement, self.num_rows)

    def one_hot(self, ids):
        """float [len(ids), N]: 1 where column n == ids[b] (columns sharded)."""
        hit = tf.equal(tf.expand_dims(ids, 1), tf.expand_dims(self.index(), 0))
        return self.columns(tf.cast(hit, tf.float32))

    def counts(self, ids):
        """float [N]: how often each row index occurs in ``ids``."""
        return tf.reduce_sum(self.one_hot(ids), axis=0)


def _prepare(embeddings, ids, weights, valid_classes, *, trainable=True):
    rows = _Rows(weights)  # reads the layout from the variable itself
    n = rows.num_rows if valid_classes is None else int(valid_classes)
    x = _unit(rows.replicate(tf.cast(embeddings, tf.float32)))
    ids = rows.replicate(tf.cast(ids, tf.int32))
    w = tf.convert_to_tensor(weights)
    w = _unit(w if trainable else tf.stop_gradient(w))
    logits = rows.columns(tf.matmul(x, w, transpose_b=True))  # cosine [B, N]
    valid = tf.cast(rows.index() < n, tf.float32)
    return rows, n, x, ids, logits, valid


def sampled_instance_classification_loss(embeddings, instance_ids, class_weights,
                                         sampled_ids, *, temperature: float = defaults.TEMPERATURE,
                                         valid_classes: int | None = None):
    """Per-example loss [B] and hit [B] (own class ranked first within the set) of the
    cosine softmax over {the batch's ids} U {sampled_ids} (paper Table 3).

    sampled_ids: int [S] classes drawn uniformly (duplicates and overlaps with the
    batch count once: the set is a set).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    rows, n, x, ids, cosine, valid = _prepare(embeddings, instance_ids, class_weights,
                                              valid_classes)
    sampled = rows.replicate(tf.cast(sampled_ids, tf.int32))
    member = tf.minimum(rows.counts(tf.concat([ids, sampled], 0)), 1.0) * valid  # [N]
    own = rows.one_hot(ids)  # [B, N]
    inv_t = 1.0 / temperature
    # cosine <= 1, so exp(logit - 1/t) <= 1: a fixed shift, no max pass
    exp_logits = tf.exp((cosine - 1.0) * inv_t) * tf.expand_dims(member, 0)
    log_denominator = tf.math.log(tf.reduce_sum(exp_logits, axis=1)) + inv_t
    target = tf.reduce_sum(cosine * own, axis=1) * inv_t
    masked = cosine - 3.0 * (1.0 - tf.expand_dims(member, 0)) - 3.0 * own  # others only
    hit = tf.reduce_sum(cosine * own, axis=1) >= tf.reduce_max(masked, axis=1)
    return log_denominator - target, hit


def npid_nce_loss(embeddings, instance_ids, memory_bank, noise_ids, *, log_z=None,
                  estimate_now=None, temperature: float = defaults.NPID_TEMPERATURE,
                  valid_classes: int | None = None, proximal: float = 0.0):
    """NPID's NCE loss per example [B], the batch's estimate of log Z, and hit [B].

    P(i|f) = exp(v_i . f / t) / Z; h = P / (P + m / N); loss = -log h(own) -
    sum over the m noise samples of log(1 - h). ``log_z`` is the fixed estimate
    (NPID: from the first batch, Z = N * mean exp(v_j . f / t) over noise samples);
    ``log_z=None`` uses this batch's own estimate (NPID's first batch), and so does a
    true scalar ``estimate_now`` (the training step's "first step" flag). The returned
    estimate lets the caller keep it. ``proximal`` adds
    lambda * ||f - v_own||^2 (NPID's proximal regularisation). The bank gets no gradient.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    rows, n, x, ids, cosine, valid = _prepare(embeddings, instance_ids, memory_bank,
                                              valid_classes, trainable=False)
    noise = rows.replicate(tf.cast(noise_ids, tf.int32))
    m = int(noise.shape[0])
    counts = rows.counts(noise) * valid  # [N]
    own = rows.one_hot(ids)
    logits = cosine / temperature
    # Monte Carlo estimate of Z over this batch's noise samples (no gradient)
    mean_exp = tf.reduce_sum(tf.exp(logits - 1.0 / temperature) * tf.expand_dims(counts, 0)
                             ) / (m * int(cosine.shape[0]))
    log_z_estimate = tf.stop_gradient(tf.math.log(mean_exp) + 1.0 / temperature
                                      + math.log(n))
    if log_z is None:
        log_z = log_z_estimate
    elif estimate_now is not None:  # select without tf.where (segfaults under DTensor)
        use = tf.cast(estimate_now, tf.float32)
        log_z = use * log_z_estimate + (1.0 - use) * log_z
    # a = log P - log(m Pn); log h = -softplus(-a), log(1 - h) = -softplus(a)
    a = logits - log_z - math.log(m / n)
    positive = tf.reduce_sum(own * tf.math.softplus(-a), axis=1)
    negative = tf.reduce_sum(tf.expand_dims(counts, 0) * tf.math.softplus(a), axis=1)
    loss = positive + negative
    if proximal:
        v_own = tf.matmul(own, _unit(tf.stop_gradient(tf.convert_to_tensor(memory_bank))))
        loss += proximal * tf.reduce_sum(tf.square(x - v_own), axis=1)
    others = cosine - 3.0 * (1.0 - tf.expand_dims(valid, 0)) - 3.0 * own
    hit = tf.reduce_sum(cosine * own, axis=1) >= tf.reduce_max(others, axis=1)
    return loss, log_z_estimate, hit


def update_memory_bank(memory_bank, instance_ids, features, *, momentum: float = 0.5):
    """v_i <- normalise(momentum * v_i + (1 - momentum) * normalise(f_i)) for the rows
    ``instance_ids`` (unique within the call), in place, exactly, on a sharded bank:
    one-hot rows [B, N] (columns sharded) times the updates, no scatter."""
    rows = _Rows(memory_bank)
    ids = rows.replicate(tf.cast(instance_ids, tf.int32))
    f = _unit(rows.replicate(tf.cast(features, tf.float32)))
    own = rows.one_hot(ids)  # [B, N]
    bank = tf.convert_to_tensor(memory_bank)
    old = tf.matmul(own, bank)  # [B, D]: each row found on its owner, summed over shards
    new = _unit(momentum * old + (1.0 - momentum) * f)
    # [N, D], rows sharded like the bank. transpose_a, not tf.transpose: DTensor cannot
    # expand a Transpose whose output layout differs (the 1-device mesh case).
    delta = tf.matmul(own, new - old, transpose_a=True)
    if rows.placement.sharded:
        delta = layouts.relayout(delta, memory_bank.layout)
    memory_bank.assign_add(delta)

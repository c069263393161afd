"""Learning-rate schedules (pure functions of the step)."""

from __future__ import annotations

import math

import tensorflow as tf


def scaled_learning_rate(base_lr: float, base_batch: int, batch_size: int) -> float:
    """Linear scaling: the paper's 0.48 at batch 4096 -> 0.48 * B / 4096."""
    return base_lr * batch_size / base_batch


def warmup_cosine(step, *, peak_lr: float, total_steps, warmup_steps: int):
    """Linear warm-up to ``peak_lr`` over ``warmup_steps``, then cosine decay to 0.
    ``total_steps`` may be a tensor (a time-budgeted run's planned length)."""
    step = tf.cast(step, tf.float32)
    warmup = float(max(warmup_steps, 0))
    total = tf.maximum(tf.cast(total_steps, tf.float32), 1.0)
    warm = peak_lr * (step + 1.0) / max(warmup, 1.0)
    cosine = 0.5 * peak_lr * (1.0 + tf.cos(math.pi * _fraction(step, warmup, total)))
    return tf.where(step < warmup, warm, cosine)


def _fraction(step, first, end):
    """How far ``step`` is from ``first`` to ``end``, clipped to [0, 1] (float32)."""
    return tf.clip_by_value((step - first) / tf.maximum(end - first, 1.0), 0.0, 1.0)


def planned_cosine(step, *, peak_lr: float, warmup_steps: int, default_total_steps: int,
                   planned_steps, start_step, start_progress):
    """A time-budgeted run's schedule (training/budget.py): :func:`warmup_cosine` over
    ``default_total_steps`` until there is a plan (``planned_steps`` > 0); from the
    plan's ``start_step`` on, 0.5 * peak_lr * (1 + cos(pi p)) with p the
    :func:`planned_progress`. A re-plan only changes how fast p moves from where it
    stands, so the rate stays continuous and the curve a cosine in p. The plan's values
    may be tensors (variables read in the step)."""
    base = warmup_cosine(step, peak_lr=peak_lr, total_steps=default_total_steps,
                         warmup_steps=warmup_steps)
    progress = planned_progress(step, warmup_steps=warmup_steps,
                                default_total_steps=default_total_steps,
                                planned_steps=planned_steps, start_step=start_step,
                                start_progress=start_progress)
    segment = 0.5 * peak_lr * (1.0 + tf.cos(math.pi * progress))
    planned = tf.logical_and(tf.cast(planned_steps, tf.float32) > 0,
                             tf.cast(step, tf.float32) >= tf.cast(start_step, tf.float32))
    return tf.where(planned, segment, base)


def planned_progress(step, *, warmup_steps: int, default_total_steps: int, planned_steps,
                     start_step, start_progress):
    """The cosine's progress p (0 at the warm-up's end, 1 at the end), continuous across
    plans: before a plan, that of :func:`warmup_cosine` over ``default_total_steps``;
    from the plan's ``start_step``, where it stood at ``start_progress``, linear to 1 at
    ``planned_steps``. A float32 tensor; the loop calls it on the host (eagerly) to find
    where a re-plan starts, the step through :func:`planned_cosine`."""
    step = tf.cast(step, tf.float32)
    start = tf.cast(start_step, tf.float32)
    total = tf.cast(planned_steps, tf.float32)
    done = tf.cast(start_progress, tf.float32)
    base = _fraction(step, float(max(warmup_steps, 0)),
                     tf.maximum(tf.cast(default_total_steps, tf.float32), 1.0))
    segment = done + (1.0 - done) * _fraction(step, start, total)
    return tf.where(tf.logical_and(total > 0, step >= start), segment, base)


def cosine_decay(step: int, total_steps: int, peak: float = 1.0) -> float:
    """``peak`` decayed to 0 by a half cosine over ``total_steps`` (no warm-up), on the
    host: the evaluators' schedule (linear probe, fine-tuning)."""
    return 0.5 * peak * (1 + math.cos(math.pi * step / total_steps))

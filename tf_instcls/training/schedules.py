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
    progress = tf.clip_by_value((step - warmup) / tf.maximum(total - warmup, 1.0), 0.0, 1.0)
    cosine = 0.5 * peak_lr * (1.0 + tf.cos(math.pi * progress))
    return tf.where(step < warmup, warm, cosine)


def planned_cosine(step, *, peak_lr: float, warmup_steps: int, default_total_steps: int,
                   planned_steps, start_step, start_progress):
    """A time-budgeted run's schedule (training/budget.py): :func:`warmup_cosine` over
    ``default_total_steps`` until there is a plan (``planned_steps`` > 0). The cosine's
    progress p (0 at the warm-up's end, 1 at the end) is continuous across plans: from
    the plan's ``start_step``, where it stood at ``start_progress``, it runs linearly to
    1 at ``planned_steps``, and the rate is 0.5 * peak_lr * (1 + cos(pi p)) throughout.
    A re-plan only changes how fast p moves from there, so the rate stays continuous and
    the curve a cosine in p. The plan's values may be tensors (variables read in the
    step)."""
    base = warmup_cosine(step, peak_lr=peak_lr, total_steps=default_total_steps,
                         warmup_steps=warmup_steps)
    step = tf.cast(step, tf.float32)
    start = tf.cast(start_step, tf.float32)
    total = tf.cast(planned_steps, tf.float32)
    done = tf.cast(start_progress, tf.float32)
    progress = done + (1.0 - done) * tf.clip_by_value(
        (step - start) / tf.maximum(total - start, 1.0), 0.0, 1.0)
    segment = 0.5 * peak_lr * (1.0 + tf.cos(math.pi * progress))
    return tf.where(tf.logical_and(total > 0, step >= start), segment, base)


def planned_progress(step: int, *, warmup_steps: int, default_total_steps: int,
                     planned_steps: int, start_step: int, start_progress: float) -> float:
    """The cosine's progress p of :func:`planned_cosine` at ``step`` (on the host)."""
    def fraction(numerator, denominator):
        return min(max(numerator / max(denominator, 1.0), 0.0), 1.0)

    if planned_steps > 0 and step >= start_step:
        return start_progress + (1.0 - start_progress) * fraction(
            step - start_step, planned_steps - start_step)
    return fraction(step - warmup_steps, default_total_steps - warmup_steps)


def cosine_decay(step: int, total_steps: int, peak: float = 1.0) -> float:
    """``peak`` decayed to 0 by a half cosine over ``total_steps`` (no warm-up), on the
    host: the evaluators' schedule (linear probe, fine-tuning)."""
    return 0.5 * peak * (1 + math.cos(math.pi * step / total_steps))

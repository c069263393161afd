"""Dynamic loss scaling for float16 compute (``ModelConfig.precision = "mixed_float16"``).

The loss is multiplied by the scale before the gradient and the gradients divided by it.
A step whose gradients overflow is skipped like any non-finite step and halves the
scale (not below 1); ``growth_steps`` finite steps in a row double it (Keras'
LossScaleOptimizer rule). The scale and its count of finite steps are replicated
variables, checkpointed with the run.
"""

from __future__ import annotations

import tensorflow as tf

from tf_instcls.parallel import layouts


class DynamicLossScale:
    """The loss scale of one run: ``scale(loss)``, ``unscale(grads)`` and, after the
    step's non-finite check, ``update(loss_finite, finite)``."""

    def __init__(self, mesh, *, initial_scale: float, growth_steps: int):
        self.scale_var = layouts.replicated_variable(float(initial_scale), mesh, "loss_scale",
                                                     tf.float32)
        self.good_steps = layouts.replicated_variable(0, mesh, "loss_scale_good_steps",
                                                      tf.int64)
        self.growth_steps = growth_steps

    def variables(self) -> dict:
        """{checkpoint name: variable}."""
        return {"loss_scale": self.scale_var, "loss_scale_good_steps": self.good_steps}

    def scale(self, loss):
        return loss * self.scale_var

    def unscale(self, grads: list) -> list:
        return [_unscale(g, self.scale_var) for g in grads]

    def update(self, loss_finite, finite) -> dict:
        """Halves the scale after an overflow (the step was skipped), doubles it after
        ``growth_steps`` finite steps. Returns the step's metrics: ``finite`` is True
        for an overflow the scaling absorbs (a finite loss and a scale above 1), and
        the scale the step used."""
        scale, good = self.scale_var, self.good_steps
        overflow = tf.logical_and(loss_finite, tf.logical_not(finite))
        grown = tf.logical_and(finite, good + 1 >= self.growth_steps)
        new_scale = tf.where(overflow, tf.maximum(scale / 2.0, 1.0),
                             tf.where(grown, scale * 2.0, scale))
        metrics = {"finite": tf.logical_or(finite, tf.logical_and(overflow, scale > 1.0)),
                   "loss_scale": tf.convert_to_tensor(scale)}
        good.assign(tf.where(tf.logical_and(finite, tf.logical_not(grown)), good + 1,
                             tf.zeros_like(good)))
        scale.assign(new_scale)
        return metrics


def _unscale(grad, scale):
    """A gradient of the scaled loss divided by the loss scale (dense or sparse)."""
    if grad is None:
        return None
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values / scale, grad.indices, grad.dense_shape)
    return grad / tf.cast(scale, grad.dtype)

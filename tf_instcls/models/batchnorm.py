"""BatchNormalization with a hand-written training-mode gradient: fewer passes, same math.

Keras' BatchNormalization in training mode is composed from generic ops (reduce_mean,
squared_difference, the normalisation), and TensorFlow differentiates that composition
op by op: broadcasts become Tile ops, the mean's and the variance's gradients are each
materialised, added (AddN) and multiplied back. On this CPU that made BN's elementwise
work about a third of the ResNet-18-CIFAR train step, as much as the forward
convolutions (``benchmarks/bench_step_parts.py --profile``). TensorFlow's fused kernel
(FusedBatchNormV3) would do it in two passes, but DTensor has no layout propagation for
it ("'tf.FusedBatchNormV3' op does not implement layout propagation"), and BN over a
batch sharded across devices must reduce its statistics over the global batch.

``BatchNorm`` keeps Keras' layer (its variables, names, config, inference path, moving
statistics and their update) and replaces only the training-mode normalisation with a
``tf.custom_gradient`` of the closed-form BN gradient:

    xc = x - mean,  inv = 1 / sqrt(var + eps),  y = xc * (gamma inv) + beta
    dbeta = sum(dy),  dgamma = inv sum(dy xc)
    dx = gamma inv (dy - dbeta / M - xc inv^2 sum(dy xc) / M)

built from reductions and elementwise ops only, so DTensor reduces the statistics (and
the gradient's two sums) over the global batch on any mesh exactly as before. It is the
same function and the same gradient as Keras' layer up to float rounding (float64
tests against Keras' own layer and its autodiff).

Where the whole batch is on one device (a 1-device mesh: one CPU, one GPU, or no
DTensor at all) there is nothing to reduce across devices, and ``use_fused_kernel``
switches the training pass to TensorFlow's fused kernel (``FusedBatchNormV2`` and its
gradient ``FusedBatchNormGradV2``: oneDNN on the CPU, cuDNN on a GPU), the same
statistics in two passes. DTensor has no layout rule for it either, but it lets an op
without one run replicated when the op is enrolled by name; this module enrols these
two ops (``DTENSOR_ENABLE_REPLICATED_SPMD_AS_DEFAULT_TF.<OP>``). Replicated means every
device would run the whole batch, so the training code turns the fused kernel on only
for a 1-device mesh (``models.use_fused_batchnorm``). ``FusedBatchNormV3`` is not
usable this way: enrolled, TensorFlow 2.21's DTensor crashes on it.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

# Enrols the fused kernel's two ops for DTensor's replicated expansion (module docstring).
for _op in ("FUSEDBATCHNORMV2", "FUSEDBATCHNORMGRADV2"):
    os.environ.setdefault(f"DTENSOR_ENABLE_REPLICATED_SPMD_AS_DEFAULT_TF.{_op}", "1")


def _fused(x, gamma, beta, epsilon):
    """Training-mode BN by the fused kernel: (y, batch mean, population variance).

    The kernel reports the variance with Bessel's correction (for its own running
    average); the moving statistics here, like Keras', average the population one."""
    y, mean, variance, _, _ = tf.raw_ops.FusedBatchNormV2(
        x=x, scale=gamma, offset=beta, mean=tf.constant([], tf.float32),
        variance=tf.constant([], tf.float32), epsilon=epsilon, is_training=True)
    count = tf.cast(tf.size(x) // tf.size(mean), tf.float32)
    return y, tf.stop_gradient(mean), tf.stop_gradient(variance * ((count - 1.0) / count))


def _normalize(x, gamma, beta, axes, epsilon):
    """Training-mode BN of float32 ``x`` over ``axes``; returns (y, mean, variance)."""

    @tf.custom_gradient
    def forward(x, gamma, beta):
        mean = tf.reduce_mean(x, axes)
        centred = x - mean
        variance = tf.reduce_mean(tf.square(centred), axes)
        inv = tf.math.rsqrt(variance + epsilon)
        scale = gamma * inv
        y = centred * scale + beta

        def backward(dy, dmean=None, dvariance=None):
            del dmean, dvariance  # the statistics feed only the moving averages
            count = tf.cast(tf.size(x) // tf.size(mean), x.dtype)
            dbeta = tf.reduce_sum(dy, axes)
            dxc = tf.reduce_sum(dy * centred, axes)
            dgamma = dxc * inv
            dx = (dy - dbeta / count - centred * (dxc * inv * inv / count)) * scale
            return dx, dgamma, dbeta

        return (y, tf.stop_gradient(mean), tf.stop_gradient(variance)), backward

    return forward(x, gamma, beta)


@keras.saving.register_keras_serializable(package="tf_instcls")
class BatchNorm(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training-mode pass has the closed-form
    gradient (module docstring). Anything else (inference, masks, renorm, no scale or
    no centre, a channel axis other than the last) is Keras' own path.

    ``use_fused_kernel`` (set by ``models.use_fused_batchnorm``; not saved with the
    model) takes TensorFlow's fused kernel for float32 / 16-bit inputs instead: only
    where the batch is on one device (module docstring)."""

    use_fused_kernel = False

    def call(self, inputs, training=None, mask=None):
        fast = (training and self.trainable and mask is None and not self.renorm
                and self.scale and self.center
                and self.axis in (len(inputs.shape) - 1, -1))
        if not fast:
            return super().call(inputs, training=training, mask=mask)
        axes = list(range(len(inputs.shape) - 1))
        if self.use_fused_kernel and inputs.dtype != tf.float64:
            # 16-bit inputs stay 16-bit (the kernel keeps its statistics in float32); a
            # [B, C] or other rank is [rows, 1, 1, C] to the NHWC kernel
            dtype = tf.float32
            x = inputs if len(inputs.shape) == 4 else tf.reshape(
                inputs, [-1, 1, 1, inputs.shape[-1]])
            y, mean, variance = _fused(x, tf.cast(self.gamma, dtype),
                                       tf.cast(self.beta, dtype), self.epsilon)
            y = tf.reshape(y, tf.shape(inputs)) if len(inputs.shape) != 4 else y
        else:
            # Like Keras: 16-bit inputs are normalised in float32, float64 stays float64.
            dtype = tf.float64 if inputs.dtype == tf.float64 else tf.float32
            x = tf.cast(inputs, dtype)
            y, mean, variance = _normalize(x, tf.cast(self.gamma, dtype),
                                           tf.cast(self.beta, dtype), axes, self.epsilon)
        momentum = self.momentum
        self.moving_mean.assign(tf.cast(
            tf.cast(self.moving_mean, dtype) * momentum + mean * (1.0 - momentum),
            self.moving_mean.dtype))
        self.moving_variance.assign(tf.cast(
            tf.cast(self.moving_variance, dtype) * momentum + variance * (1.0 - momentum),
            self.moving_variance.dtype))
        return tf.cast(y, self.compute_dtype)


def use_fused_batchnorm(model: keras.Model, enabled: bool = True) -> int:
    """Sets ``use_fused_kernel`` on every :class:`BatchNorm` in ``model`` (nested models
    too); returns how many. Only for a model whose training batch is on one device."""
    count = 0
    for layer in model.layers:
        if isinstance(layer, BatchNorm):
            layer.use_fused_kernel = enabled
            count += 1
        elif isinstance(layer, keras.Model):  # the backbone and head inside the encoder
            count += use_fused_batchnorm(layer, enabled)
    return count
